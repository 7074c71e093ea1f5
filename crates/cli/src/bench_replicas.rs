//! `gosok bench replicas`: replicated controllers on PostgreSQL against one on SQLite, all
//! real `gosok server run` processes over loopback.
//!
//! 1. Durable submissions over `--connections` keep-alive connections to the leader of 3
//!    replicas on a throwaway PostgreSQL cluster (or `--store`), and to a single controller
//!    on SQLite, alternately `--rounds` times; meanwhile the followers' lag (how long after
//!    it was written each follower applied the newest record it has) is sampled every 10 ms.
//! 2. Takeover: `--takeovers` times, SIGKILL the leader and time until a submission sent to
//!    the other replicas is answered 201; the killed replica is started again as a follower.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use crate::server_cmd::{BENCH_CLUSTER, median, pct, submit_load};

#[derive(Args)]
pub struct BenchReplicasArgs {
    /// Durable submissions per round and store.
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Throughput rounds (each store once per round, alternating).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Leader kills timed.
    #[arg(long, default_value_t = 10)]
    takeovers: u32,
    /// A PostgreSQL database to use (emptied first!) instead of a throwaway cluster.
    #[arg(long)]
    store: Option<String>,
}

struct Proc {
    child: Child,
    base: String,
    dir: PathBuf,
    store: String,
    port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(dir: &Path, store: &str, port: u16) -> anyhow::Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["server", "run", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(["--store", store])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("listening on ") => break,
            Some(Ok(_)) => {}
            _ => anyhow::bail!("a controller exited before listening"),
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok(Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.to_path_buf(),
        store: store.to_string(),
        port,
    })
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

fn ready(base: &str) -> bool {
    http().get(&format!("{base}/readyz")).call().is_ok()
}

/// Initialises `store`, starts `n` controllers on it and declares the bench highway with
/// 8 tenants; returns them and the tenants' tokens.
/// Returns the processes, the tenants' tokens and the admin token.
fn highway(root: &Path, store: &str, n: usize) -> anyhow::Result<(Vec<Proc>, Vec<String>, String)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["server", "init", "--data-dir"])
        .arg(root.join("r0"))
        .args(["--store", store])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout)?.trim().to_string();
    let config = "submit_rate_per_s = 1e9\nsubmit_burst = 1e9\nmax_pending_jobs_per_tenant = 100000000\nmax_connections_per_address = 4096\n";
    let mut procs = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("r{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("gosok.toml"), config)?;
        procs.push(spawn(&dir, store, free_port()?)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        anyhow::ensure!(Instant::now() < deadline, "no controller became ready");
        if let Some(p) = procs.iter().find(|p| n == 1 || ready(&p.base)) {
            break p.base.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let auth = format!("Bearer {admin}");
    let mut cluster = BENCH_CLUSTER.to_string();
    let tenants: Vec<String> = (0..8).map(|i| format!("bench-{i}")).collect();
    for t in &tenants {
        cluster.push_str(&format!(
            "\n[[tenant]]\nname = \"{t}\"\ntier = \"startup\"\n"
        ));
    }
    http()
        .put(&format!("{leader}/v1/topology"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/toml")
        .send_string(&cluster)
        .map_err(|e| anyhow::anyhow!("topology: {e}"))?;
    let mut tokens = Vec::new();
    for t in &tenants {
        let v: Value = serde_json::from_str(
            &http()
                .post(&format!("{leader}/v1/tenants/{t}/tokens"))
                .set("Authorization", &auth)
                .call()?
                .into_string()?,
        )?;
        tokens.push(v["token"].as_str().unwrap_or_default().to_string());
    }
    Ok((procs, tokens, admin))
}

fn leader_of(procs: &[Proc]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = procs.iter().position(|p| ready(&p.base)) {
            return Ok(i);
        }
        anyhow::ensure!(Instant::now() < deadline, "no replica leads");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(a: BenchReplicasArgs) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("gosok-bench-replicas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _cluster;
    let store = match &a.store {
        Some(s) => {
            let mut pg = gosok_store::PgStore::open(s)?;
            pg.wipe()?;
            s.clone()
        }
        None => {
            let c = gosok_store::testpg::Cluster::start().map_err(|e| anyhow::anyhow!(e))?;
            let url = c.create_db("bench").map_err(|e| anyhow::anyhow!(e))?;
            _cluster = c;
            url
        }
    };
    let mut rates = [Vec::new(), Vec::new()];
    let mut p99s = [Vec::new(), Vec::new()];
    let mut lag_ms = Vec::new();
    for round in 0..a.rounds {
        for (k, name) in ["postgres", "sqlite"].iter().enumerate() {
            let root = tmp.join(format!("{name}-{round}"));
            let (procs, tokens, admin) = if k == 0 {
                if round > 0 {
                    gosok_store::PgStore::open(&store)?.wipe()?;
                }
                highway(&root, &store, 3)?
            } else {
                highway(&root, "sqlite", 1)?
            };
            let leader = if k == 0 { leader_of(&procs)? } else { 0 };
            let followers: Vec<String> = (0..procs.len())
                .filter(|&i| i != leader)
                .map(|i| procs[i].base.clone())
                .collect();
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut lags = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        for f in &followers {
                            // The replicas' status is for operators.
                            if let Ok(r) = http()
                                .get(&format!("{f}/v1/replica"))
                                .set("Authorization", &format!("Bearer {admin}"))
                                .call()
                                && let Ok(v) = serde_json::from_str::<Value>(
                                    &r.into_string().unwrap_or_default(),
                                )
                                && let Some(l) = v["lag_ms"].as_f64()
                            {
                                lags.push(l);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    lags
                })
            };
            let (secs, mut lat) = submit_load(
                &procs[leader].base,
                &None,
                &tokens,
                a.jobs,
                a.connections,
                crate::server_cmd::BENCH_SPEC,
            )?;
            done.store(true, Ordering::SeqCst);
            let lags = sampler.join().unwrap_or_default();
            if k == 0 {
                lag_ms.extend(lags);
            }
            let rate = a.jobs as f64 / secs;
            eprintln!(
                "round {round}: {name}: {rate:.0} jobs/s (p50 {:.1} ms, p99 {:.1} ms)",
                median(&mut lat),
                pct(&mut lat, 0.99)
            );
            rates[k].push(rate);
            p99s[k].push(pct(&mut lat, 0.99));
        }
    }
    // Takeovers.
    gosok_store::PgStore::open(&store)?.wipe()?;
    let (mut procs, tokens, _) = highway(&tmp.join("takeover"), &store, 3)?;
    let spec =
        r#"{"name":"t","hold":true,"groups":[{"replicas":1,"accelerators":1,"models":["H100"]}]}"#;
    let mut takeovers = Vec::new();
    for _ in 0..a.takeovers {
        let old = leader_of(&procs)?;
        // Wait until the others follow (a fresh replica replays first).
        std::thread::sleep(Duration::from_millis(1000));
        let others: Vec<String> = (0..procs.len())
            .filter(|&i| i != old)
            .map(|i| procs[i].base.clone())
            .collect();
        let t0 = Instant::now();
        let _ = procs[old].child.kill();
        let _ = procs[old].child.wait();
        let mut k = 0;
        loop {
            let r = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build()
                .post(&format!("{}/v1/jobs", others[k % others.len()]))
                .set("Authorization", &format!("Bearer {}", tokens[0]))
                .set("Content-Type", "application/json")
                .send_string(spec);
            if matches!(r, Ok(ref r) if r.status() == 201) {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "no takeover in 60 s"
            );
            k += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        eprintln!("takeover: {ms:.0} ms");
        takeovers.push(ms);
        let (dir, st, port) = (
            procs[old].dir.clone(),
            procs[old].store.clone(),
            procs[old].port,
        );
        procs[old] = spawn(&dir, &st, port)?;
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&tmp);
    let worst = takeovers.iter().cloned().fold(0.0, f64::max);
    println!(
        "durable submissions, {} connections: postgres (3 replicas) {:.0} jobs/s median of {:?}; sqlite {:.0} jobs/s median of {:?}",
        a.connections,
        median(&mut rates[0].clone()),
        rates[0].iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(&mut rates[1].clone()),
        rates[1].iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    println!(
        "submission p99: postgres {:?} ms; sqlite {:?} ms",
        p99s[0]
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        p99s[1]
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "follower lag under that load: p50 {:.0} ms, p99 {:.0} ms ({} samples)",
        median(&mut lag_ms.clone()),
        pct(&mut lag_ms.clone(), 0.99),
        lag_ms.len()
    );
    println!(
        "takeover after SIGKILL of the leader (to a 201 from another replica): median {:.0} ms, worst {:.0} ms of {}",
        median(&mut takeovers.clone()),
        worst,
        takeovers.len()
    );
    Ok(())
}
