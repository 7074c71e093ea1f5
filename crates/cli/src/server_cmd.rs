//! `gosok server init` and `gosok server run`: the controller.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use gosok_server::config::{Config, DataDir};

#[derive(Subcommand)]
pub enum ServerCommand {
    /// Create the store in DIR and print the first admin token (also written to
    /// DIR/admin.token, mode 0600).
    Init(InitArgs),
    /// Serve the API: replay the store, then listen.
    Run(RunArgs),
    /// Check a data directory offline: every log record's checksum and order, the latest
    /// snapshot's checksum and that the log covers it, and a replay. Exits non-zero, saying
    /// what it found, when anything is wrong.
    Verify(VerifyArgs),
    /// Repair a damaged data directory, only as chosen: without a choice it says what it
    /// found and which choice would repair it. What it does is written to the audit log.
    Recover(RecoverArgs),
    /// The controller replicas (PostgreSQL store): each with its role, the term, log
    /// positions and lag, as one replica sees them.
    Status(crate::replica_cmd::StatusArgs),
    /// An online backup of the log and its latest snapshot into a new SQLite store file,
    /// from which a fresh controller can start (on either store, see `migrate`).
    Backup(crate::store_cmd::BackupArgs),
    /// Move a highway's log to another store: `--from sqlite:DIR --to postgres://…`.
    Migrate(crate::store_cmd::MigrateArgs),
}

#[derive(Args)]
pub struct RecoverArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Drop the log from its first bad or missing record on, and the snapshots that cover
    /// any of it (the changes in those records are lost).
    #[arg(long)]
    truncate_log: bool,
    /// Drop snapshots that fail their checksum or cover records the log does not have.
    #[arg(long)]
    drop_snapshots: bool,
    /// Configuration file (default: DATA_DIR/gosok.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Configuration file (default: DATA_DIR/gosok.toml when it exists): the engine
    /// configuration decides whether the snapshot applies.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct InitArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Where the log goes: "sqlite" (the default: DATA_DIR/gosok.db) or a PostgreSQL URL
    /// (postgres://USER[:PASSWORD]@HOST[:PORT]/DB) for replicated controllers.
    #[arg(long, default_value = "sqlite")]
    store: String,
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on (default from the config file, else 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Configuration file (default: DATA_DIR/gosok.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Scheduling pass interval in milliseconds.
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Submissions per second one tenant may sustain.
    #[arg(long)]
    submit_rate_per_s: Option<f64>,
    /// Submissions one tenant may make in a burst.
    #[arg(long)]
    submit_burst: Option<f64>,
    /// Serve GET /metrics without a token.
    #[arg(long)]
    public_metrics: bool,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where the log is (default from the config file, else "sqlite"): a PostgreSQL URL
    /// runs this controller as one of several replicas, one of which leads.
    #[arg(long)]
    store: Option<String>,
    /// With a PostgreSQL store: the URL the other replicas reach this one at (default:
    /// http://LISTEN).
    #[arg(long)]
    advertise_url: Option<String>,
}

pub fn run(cmd: ServerCommand) -> anyhow::Result<()> {
    match cmd {
        ServerCommand::Status(a) => crate::replica_cmd::status(a),
        ServerCommand::Backup(a) => crate::store_cmd::backup(a),
        ServerCommand::Migrate(a) => crate::store_cmd::migrate(a),
        ServerCommand::Init(a) => {
            let token = gosok_server::init_store(&a.data_dir, &a.store)?;
            println!("{token}");
            eprintln!(
                "gosok: store created in {}; the admin token above is shown once and kept in {} (mode 0600)",
                a.data_dir.display(),
                DataDir(a.data_dir.clone()).admin_token().display()
            );
            Ok(())
        }
        ServerCommand::Recover(a) => {
            let d = DataDir(a.data_dir.clone());
            let cfg = match &a.config {
                Some(p) => Config::load(p, true)?,
                None => Config::load(&d.config(), false)?,
            };
            let said = gosok_server::recover(
                &a.data_dir,
                &cfg,
                gosok_server::RecoverChoices {
                    truncate_log: a.truncate_log,
                    drop_snapshots: a.drop_snapshots,
                },
            )?;
            println!("{said}");
            Ok(())
        }
        ServerCommand::Verify(a) => {
            let d = DataDir(a.data_dir.clone());
            let cfg = match &a.config {
                Some(p) => Config::load(p, true)?,
                None => Config::load(&d.config(), false)?,
            };
            let v = gosok_server::verify(&a.data_dir, &cfg)?;
            println!(
                "{}: {} log records, every checksum matches and none is missing; {}; replay diverged on {} records",
                a.data_dir.display(),
                v.records,
                if v.snapshot_seq == 0 {
                    "no snapshot used".to_string()
                } else {
                    format!(
                        "the latest snapshot (record {}) checks and restores",
                        v.snapshot_seq
                    )
                },
                v.diverged
            );
            anyhow::ensure!(
                v.diverged == 0,
                "the replay diverged from the log on {} records",
                v.diverged
            );
            Ok(())
        }
        ServerCommand::Run(a) => {
            let d = DataDir(a.data_dir.clone());
            let mut cfg = match &a.config {
                Some(p) => Config::load(p, true)?,
                None => Config::load(&d.config(), false)?,
            };
            if let Some(l) = a.listen {
                cfg.listen = l;
            }
            if let Some(t) = a.tick_ms {
                cfg.tick_ms = t;
            }
            if let Some(r) = a.submit_rate_per_s {
                cfg.submit_rate_per_s = r;
            }
            if let Some(b) = a.submit_burst {
                cfg.submit_burst = b;
            }
            if a.public_metrics {
                cfg.metrics_require_token = false;
            }
            if a.tls_cert.is_some() {
                cfg.tls_cert = a.tls_cert;
                cfg.tls_key = a.tls_key;
            }
            if let Some(s) = a.store {
                cfg.store = s;
            }
            if let Some(u) = a.advertise_url {
                cfg.advertise_url = Some(u);
            }
            cfg.check()?;
            let replicated = matches!(
                gosok_server::replica::StoreKind::parse(&cfg.store)?,
                gosok_server::replica::StoreKind::Postgres(_)
            );
            let scheme = if cfg.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            init_logging();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            if replicated {
                return rt.block_on(gosok_server::replica::run(
                    &a.data_dir,
                    cfg,
                    |addr| {
                        eprintln!(
                            "gosok server: a replica over PostgreSQL; listening on {scheme}://{addr}"
                        )
                    },
                    gosok_server::shutdown_signal(),
                ));
            }
            rt.block_on(async move {
                let running = gosok_server::start(&a.data_dir, cfg).await?;
                let r = running.app.replay;
                eprintln!(
                    "gosok server: replayed {} log records in {} ms; listening on {scheme}://{}",
                    r.records,
                    r.elapsed.as_millis(),
                    running.addr
                );
                running.until_signal().await
            })
        }
    }
}

pub(crate) fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

#[derive(Args)]
pub struct BenchServerArgs {
    /// Durable submissions timed (phase 1).
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Client connections (one thread and one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Tenants the submissions are spread over (each with its own token).
    #[arg(long, default_value_t = 8)]
    tenants: u64,
    /// Pending jobs when GET /v1/queue is timed (phase 2; submitted over HTTP).
    #[arg(long, default_value_t = 100_000)]
    queue_pending: u64,
    /// Log records when restart is timed (phase 3; written straight to the store).
    #[arg(long, default_value_t = 1_000_000)]
    restart_events: u64,
    /// Where the store goes (default: a fresh folder under the system temp dir, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Serve HTTPS with this certificate (PEM), its key and the CA the clients trust: the
    /// test fixtures in crates/cli/tests/fixtures/tls do.
    #[arg(long, requires_all = ["tls_key", "ca"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    ca: Option<PathBuf>,
}

/// A client as the bench's: trusting `ca` when the server speaks HTTPS.
fn bench_client(tls: &Option<std::sync::Arc<rustls::ClientConfig>>) -> ureq::AgentBuilder {
    let b = ureq::AgentBuilder::new();
    match tls {
        Some(t) => b.tls_config(t.clone()),
        None => b,
    }
}

pub(crate) const BENCH_CLUSTER: &str = r#"
[[site]]
name = "bench"
region = "local"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[rack]]
name = "bench-r1"
site = "bench"
power_cap_kw = 120.0

# Down: submissions wait (with that reason), so the queue grows as it would behind a full highway.
[[node]]
name = "bench-n"
rack = "bench-r1"
count = 4
cpu_cores = 112
mem_mib = 2097152
accelerator = "H100"
accelerators = 8
"#;

pub(crate) const BENCH_SPEC: &str = r#"{"name":"bench","groups":[{"replicas":1,"accelerators":1,"models":["H100"]}],"runtime_estimate_s":3600}"#;

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

/// Submits `n` jobs of `spec` over `conns` connections; returns (seconds, per-request latencies in ms).
pub(crate) fn submit_load(
    base: &str,
    tls: &Option<std::sync::Arc<rustls::ClientConfig>>,
    tokens: &[String],
    n: u64,
    conns: u64,
    spec: &'static str,
) -> anyhow::Result<(f64, Vec<f64>)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let t0 = std::time::Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let next = next.clone();
            let url = format!("{base}/v1/jobs");
            let token = format!("Bearer {}", tokens[c as usize % tokens.len()]);
            let client = bench_client(tls);
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let agent = client.max_idle_connections_per_host(1).build();
                let mut lat = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let t = std::time::Instant::now();
                    let r = agent
                        .post(&url)
                        .set("Authorization", &token)
                        .set("Content-Type", "application/json")
                        .send_string(spec);
                    match r {
                        Ok(r) if r.status() == 201 => {
                            let _ = r.into_string();
                        }
                        Ok(r) => anyhow::bail!("submission answered {}", r.status()),
                        Err(e) => anyhow::bail!("submission failed: {e}"),
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    Ok((t0.elapsed().as_secs_f64(), lat))
}

pub fn bench(a: BenchServerArgs) -> anyhow::Result<()> {
    let (dir, remove) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("gosok-bench-server-{}", std::process::id())),
            true,
        ),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let admin = gosok_server::init(&dir)?;
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        submit_rate_per_s: 1e9,
        submit_burst: 1e9,
        // The queue phase keeps queue_pending jobs pending over a few tenants.
        max_pending_jobs_per_tenant: u64::MAX,
        max_connections_per_address: Config::default().max_connections,
        ..Config::default()
    };
    cfg.metrics_require_token = false;
    cfg.tls_cert = a.tls_cert.clone();
    cfg.tls_key = a.tls_key.clone();
    let tls = match &a.ca {
        Some(ca) => Some(crate::client::tls_trusting(ca)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let running = rt.block_on(gosok_server::start(&dir, cfg.clone()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", running.addr);
    let agent = bench_client(&tls).build();
    let auth = format!("Bearer {admin}");
    let mut cluster = BENCH_CLUSTER.to_string();
    let tenants: Vec<String> = (0..a.tenants.max(1))
        .map(|i| format!("bench-{i}"))
        .collect();
    for t in &tenants {
        cluster.push_str(&format!(
            "\n[[tenant]]\nname = \"{t}\"\ntier = \"startup\"\n"
        ));
    }
    agent
        .put(&format!("{base}/v1/topology"))
        .set("Authorization", &auth)
        .set("Content-Type", "application/toml")
        .send_string(&cluster)
        .map_err(|e| anyhow::anyhow!("applying the bench topology: {e}"))?;
    let mut tokens = Vec::new();
    for t in &tenants {
        let v: serde_json::Value = serde_json::from_str(
            &agent
                .post(&format!("{base}/v1/tenants/{t}/tokens"))
                .set("Authorization", &auth)
                .call()?
                .into_string()?,
        )?;
        tokens.push(v["token"].as_str().unwrap_or_default().to_string());
    }
    eprintln!(
        "bench: phase 1: {} durable submissions over {} connections",
        a.jobs, a.connections
    );
    let batches0 = running.app.commit_batches();
    let (secs, mut lat) = submit_load(&base, &tls, &tokens, a.jobs, a.connections, BENCH_SPEC)?;
    let commits = running.app.commit_batches() - batches0;
    let submit_rate = a.jobs as f64 / secs;
    let (lat_p50, lat_p99) = (median(&mut lat), pct(&mut lat, 0.99));
    let more = a.queue_pending.saturating_sub(a.jobs);
    eprintln!(
        "bench: phase 2: {more} more submissions, then GET /v1/queue with {} pending",
        a.queue_pending
    );
    if more > 0 {
        submit_load(&base, &tls, &tokens, more, a.connections, BENCH_SPEC)?;
    }
    let mut q_ms = Vec::new();
    let mut q_bytes = 0;
    let mut q_limit_ms = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let mut body = Vec::new();
        std::io::Read::read_to_end(
            &mut agent
                .get(&format!("{base}/v1/queue"))
                .set("Authorization", &auth)
                .call()?
                .into_reader(),
            &mut body,
        )?;
        q_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        q_bytes = body.len();
        let t = std::time::Instant::now();
        agent
            .get(&format!("{base}/v1/queue?limit=100"))
            .set("Authorization", &auth)
            .call()?
            .into_string()?;
        q_limit_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let pending = running.app.core().engine().pending_count();
    rt.block_on(running.stop())?;
    eprintln!(
        "bench: phase 3: fill the log to {} records, then restart",
        a.restart_events
    );
    let spec: gosok_model::JobSpec = serde_json::from_str(BENCH_SPEC)?;
    let records = gosok_server::fill_log(&dir, &cfg, &tenants, &spec, a.restart_events, 1000)?;
    let mut restart_ms = Vec::new();
    let mut replay_ms = 0.0;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let running = rt.block_on(gosok_server::start(&dir, cfg.clone()))?;
        // Ready: it answers /healthz.
        agent
            .get(&format!("{scheme}://{}/healthz", running.addr))
            .call()?;
        restart_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        replay_ms = running.app.replay.elapsed.as_secs_f64() * 1000.0;
        rt.block_on(running.stop())?;
    }
    let report = serde_json::json!({
        "submit": {"jobs": a.jobs, "connections": a.connections, "tenants": a.tenants,
                   "seconds": secs, "jobs_per_s": submit_rate, "latency_ms_p50": lat_p50,
                   "latency_ms_p99": lat_p99, "log_commits": commits,
                   "jobs_per_commit": a.jobs as f64 / commits.max(1) as f64},
        "queue": {"pending": pending, "full_ms_median": median(&mut q_ms), "full_bytes": q_bytes,
                  "limit_100_ms_median": median(&mut q_limit_ms)},
        "restart": {"records": records, "ready_ms_median": median(&mut restart_ms),
                    "replay_ms_last": replay_ms},
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "durable submissions : {:.0} jobs/s ({} jobs, {} connections, {} tenants; p50 {:.2} ms, p99 {:.2} ms; {:.1} jobs per fsync)",
            submit_rate,
            a.jobs,
            a.connections,
            a.tenants,
            lat_p50,
            lat_p99,
            a.jobs as f64 / commits.max(1) as f64
        );
        println!(
            "GET /v1/queue       : {:.1} ms median with {} pending ({} bytes); {:.1} ms with limit=100",
            report["queue"]["full_ms_median"].as_f64().unwrap_or(0.0),
            pending,
            q_bytes,
            report["queue"]["limit_100_ms_median"]
                .as_f64()
                .unwrap_or(0.0)
        );
        println!(
            "restart             : ready in {:.0} ms median with {} log records (replay {:.0} ms)",
            report["restart"]["ready_ms_median"].as_f64().unwrap_or(0.0),
            records,
            replay_ms
        );
    }
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
