//! `gosok up`: a whole local highway in one process tree — the controller on an embedded
//! store, node agents (child processes, one per rack) for a demo highway modelled on Korea's,
//! demo tenants with their tokens, and optionally a demo workload of real commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::api::Api;
use clap::{Args, ValueEnum};
use gosok_model::ClusterSpec;
use gosok_server::config::{Config, DataDir};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// A handful of nodes per site.
    Small,
    /// About two thousand virtual nodes.
    Large,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the controller keeps its store, credentials and the agents' work.
    #[arg(long, default_value = "gosok-data")]
    data_dir: PathBuf,
    /// The API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[arg(long, value_enum, default_value_t = Scale::Small)]
    scale: Scale,
    /// Keep submitting a realistic mix of real commands so the queue visibly moves.
    #[arg(long)]
    demo_workload: bool,
}

/// `<data-dir>/credentials.toml`.
#[derive(Serialize, Deserialize)]
struct Credentials {
    url: String,
    admin_token: String,
    /// One agent token per rack's agent: each acts only for the nodes it holds.
    #[serde(default)]
    agent_tokens: BTreeMap<String, String>,
    tenant_tokens: BTreeMap<String, String>,
}

/// One rack of the demo highway: its site, accelerator and node count.
struct DemoRack {
    site: &'static str,
    name: String,
    accelerator: &'static str,
    nodes: u64,
    cap_kw: f64,
}

fn demo_racks(scale: Scale) -> Vec<DemoRack> {
    // (site, rack prefix, accelerator, racks) per scale; the large scale's racks are pods.
    let plan: &[(&str, &str, &str)] = &[
        ("pohang", "ph", "H100"),
        ("pohang", "ph", "B200"),
        ("jeonnam", "jn", "H200"),
        ("jeonnam", "jn", "RNGD"),
        ("ulsan", "us", "H100"),
        ("ulsan", "us", "RNGD"),
    ];
    let mut out = Vec::new();
    let mut k: BTreeMap<&str, u32> = BTreeMap::new();
    for &(site, prefix, accelerator) in plan {
        let i = k.entry(prefix).or_default();
        *i += 1;
        let (nodes, cap_kw) = match scale {
            Scale::Small => (2, 40.0),
            // A pod of 340 nodes: at most about 340 × (8 × 1.0 + 1.5) kW.
            Scale::Large => (340, 3_400.0),
        };
        out.push(DemoRack {
            site,
            name: format!("{prefix}-r{i}"),
            accelerator,
            nodes,
            cap_kw,
        });
    }
    out
}

pub(crate) fn demo_cluster(scale: Scale) -> anyhow::Result<ClusterSpec> {
    let racks = demo_racks(scale);
    // Quotas scale with the highway: the anchor is guaranteed half of the Hopper-class
    // accelerators, the agency an eighth of the NPUs.
    let hopper: u64 = racks
        .iter()
        .filter(|r| matches!(r.accelerator, "H100" | "H200"))
        .map(|r| r.nodes * 8)
        .sum();
    let npu: u64 = racks
        .iter()
        .filter(|r| r.accelerator == "RNGD")
        .map(|r| r.nodes * 8)
        .sum();
    let mut t = String::from(
        r#"
[[site]]
name = "pohang"
region = "gyeongbuk"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.2

[[site]]
name = "jeonnam"
region = "jeonnam"
jurisdiction = "KR"
power_budget_mw = 20.0
pue = 1.25

[[site]]
name = "ulsan"
region = "ulsan"
jurisdiction = "KR"
power_budget_mw = 8.0
pue = 1.3
"#,
    );
    for r in &racks {
        let (cpu, mem, base) = if r.accelerator == "RNGD" {
            (64, 524_288, 800)
        } else {
            (112, 2_097_152, 1500)
        };
        t.push_str(&format!(
            "\n[[rack]]\nname = \"{}\"\nsite = \"{}\"\npower_cap_kw = {:.1}\n\n[[node]]\nname = \"{}-n\"\nrack = \"{}\"\ncount = {}\ncpu_cores = {cpu}\nmem_mib = {mem}\naccelerator = \"{}\"\naccelerators = 8\nbase_power_w = {base}\n",
            r.name, r.site, r.cap_kw, r.name, r.name, r.nodes, r.accelerator
        ));
    }
    t.push_str(&format!(
        r#"
[[tenant]]
name = "hyundai-ai"
tier = "anchor"
weight = 3.0
share_cap = 0.5
default_priority = "high"
allowed_jurisdictions = ["KR"]
quotas = [{{ accelerator = "nvidia-hopper", guaranteed = {anchor}, borrow_limit = {anchor} }}]

[[tenant]]
name = "seoul-startup"
tier = "startup"
weight = 1.0
share_cap = 0.25

[[tenant]]
name = "kaist-lab"
tier = "academic"
weight = 1.0
share_cap = 0.25

[[tenant]]
name = "nia-public"
tier = "public"
weight = 1.5
allowed_jurisdictions = ["KR"]
quotas = [{{ accelerator = "RNGD", guaranteed = {agency}, borrow_limit = {agency} }}]
"#,
        anchor = (hopper / 2).max(16),
        agency = (npu / 8).max(8),
    ));
    ClusterSpec::from_toml(&t).context("the demo highway")
}

fn write_credentials(path: &Path, c: &Credentials) -> anyhow::Result<()> {
    let text = format!(
        "# gosok up's credentials, and a client config as it is:\n#   gosok --config {} --as seoul-startup jobs\n# (url and admin_token read as server and token; --as TENANT picks a tenant token)\n{}",
        path.display(),
        toml::to_string(c)?
    );
    gosok_server::write_private(path, text.as_bytes())
}

/// Declares the demo highway and its tenants, and makes the tokens on a first start; on a
/// later start reads them back from `credentials.toml`.
fn provision(dir: &Path, url: &str, admin: &str, scale: Scale) -> anyhow::Result<Credentials> {
    let path = dir.join("credentials.toml");
    let a = Api::new(url, admin);
    let cluster = demo_cluster(scale)?;
    let changed = a.call(
        "PUT",
        "/v1/topology",
        Some(&serde_json::to_value(&cluster)?),
    )?;
    let n = changed["changed"].as_array().map_or(0, Vec::len);
    if n > 0 {
        eprintln!("gosok up: declared the demo highway ({n} changes)");
    }
    let agent_tokens = |c: &mut Credentials| -> anyhow::Result<()> {
        for r in demo_racks(scale) {
            if let std::collections::btree_map::Entry::Vacant(e) = c.agent_tokens.entry(r.name) {
                let t = a.call("POST", "/v1/agent-tokens", Some(&json!({})))?["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                e.insert(t);
            }
        }
        Ok(())
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let mut c: Credentials =
            toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
        c.url = url.to_string();
        agent_tokens(&mut c)?;
        write_credentials(&path, &c)?;
        return Ok(c);
    }
    let mut tenant_tokens = BTreeMap::new();
    for t in &cluster.tenant {
        let v = a.call(
            "POST",
            &format!("/v1/tenants/{}/tokens", t.name),
            Some(&json!({})),
        )?;
        tenant_tokens.insert(
            t.name.clone(),
            v["token"].as_str().unwrap_or_default().to_string(),
        );
    }
    let mut c = Credentials {
        url: url.to_string(),
        admin_token: admin.to_string(),
        agent_tokens: BTreeMap::new(),
        tenant_tokens,
    };
    agent_tokens(&mut c)?;
    write_credentials(&path, &c)?;
    Ok(c)
}

/// Whether the agents can sandbox their tasks: they need root (and control groups, which
/// they check themselves).
fn sandboxed() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn spawn_agents(
    dir: &Path,
    url: &str,
    tokens: &BTreeMap<String, String>,
    scale: Scale,
) -> anyhow::Result<Vec<Child>> {
    let exe = std::env::current_exe().context("cannot find the gosok binary")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let agents_dir = dir.join("agents");
    std::fs::create_dir_all(&agents_dir)?;
    let dir_abs = dir.canonicalize()?;
    let mut out = Vec::new();
    for r in demo_racks(scale) {
        // The token reaches the agent in a file only root reads: never in its arguments,
        // which every local user (and every task) can read.
        let token_file = agents_dir.join(format!("{}.token", r.name));
        let token = tokens
            .get(&r.name)
            .with_context(|| format!("no agent token for rack {}", r.name))?;
        gosok_server::write_private(&token_file, token.as_bytes())?;
        let log = std::fs::File::create(logs.join(format!("agent-{}.log", r.name)))?;
        let (cpu, mem) = if r.accelerator == "RNGD" {
            (64, 524_288)
        } else {
            (112, 2_097_152)
        };
        let mut cmd = Command::new(&exe);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            // If `gosok up` dies, its agents stop (SIGTERM: they stop their tasks and exit).
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("agent")
            .args(["--server", url])
            .arg("--token-file")
            .arg(&token_file)
            .args(["--site", r.site, "--rack", &r.name])
            .args(["--name", &format!("{}-n", r.name)])
            .args(["--nodes", &r.nodes.to_string()])
            .args(["--fake-accelerators", &format!("8x{}", r.accelerator)])
            .args([
                "--cpu-cores",
                &cpu.to_string(),
                "--mem-mib",
                &mem.to_string(),
            ])
            .arg("--work-dir")
            .arg(agents_dir.join(&r.name));
        if sandboxed() {
            // Tasks see nothing of the data directory: store, credentials, other tasks' logs.
            cmd.arg("--hide")
                .arg(&dir_abs)
                .arg("--uid-map")
                .arg(dir_abs.join("tenant-uids"));
        } else {
            cmd.args(["--isolation", "none"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the agent of rack {}", r.name))?;
        out.push(child);
    }
    Ok(out)
}

/// Stops the agents: SIGTERM (they stop their tasks), then SIGKILL after `grace`.
fn stop_agents(agents: &mut [Child], grace: Duration) {
    for c in agents.iter() {
        // SAFETY: kill(2) with a child's pid; no memory is touched.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }
    let until = Instant::now() + grace;
    for c in agents.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= until => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The demo workload: waves of real commands from every tenant, so the queue moves.
fn demo_workload(creds: &Credentials, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let sh = |script: &str| json!(["sh", "-c", script]);
    let py = |prog: &str, fallback: &str| {
        if python {
            json!(["python3", "-c", prog])
        } else {
            json!(["sh", "-c", fallback])
        }
    };
    let gang_check = "test \"$WORLD_SIZE\" = 2 && test -n \"$MASTER_ADDR\" && test -n \"$CUDA_VISIBLE_DEVICES\" \
        && echo \"rank $RANK of $WORLD_SIZE (local $LOCAL_RANK of $LOCAL_WORLD_SIZE) master $MASTER_ADDR:$MASTER_PORT devices $CUDA_VISIBLE_DEVICES\" \
        && sleep 20";
    // (tenant, spec) per wave.
    let wave = |k: u64| -> Vec<(&'static str, Value)> {
        vec![
            (
                "hyundai-ai",
                json!({"name": format!("pretrain-{k}"), "groups": [{"replicas": 2, "accelerators": 8, "models": ["nvidia-hopper"]}],
                       "runtime_estimate_s": 60, "runtime_limit_s": 300,
                       "command": py("import time, os\nfor s in range(45):\n    print('step', s, 'rank', os.environ['RANK'], flush=True)\n    time.sleep(1)",
                                     "for s in $(seq 45); do echo step $s rank $RANK; sleep 1; done")}),
            ),
            (
                "seoul-startup",
                json!({"name": format!("gang-check-{k}"), "groups": [{"replicas": 2, "accelerators": 4, "models": ["H100"]}],
                       "runtime_estimate_s": 25, "runtime_limit_s": 120, "command": sh(gang_check)}),
            ),
            (
                "seoul-startup",
                json!({"name": format!("finetune-{k}"), "groups": [{"replicas": 1, "accelerators": 2, "models": ["B200"]}],
                       "runtime_estimate_s": 30, "runtime_limit_s": 120,
                       "command": sh("echo fine-tuning on $CUDA_VISIBLE_DEVICES; sleep 25; echo done")}),
            ),
            (
                "kaist-lab",
                json!({"name": format!("sweep-{k}"), "groups": [{"replicas": 1, "accelerators": 1}],
                       "preemptible": true, "priority": "low", "runtime_estimate_s": 15, "runtime_limit_s": 60,
                       "command": py("import math\nprint(sum(math.sqrt(i) for i in range(10**6)))",
                                     "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo $i")}),
            ),
            (
                "nia-public",
                json!({"name": format!("inference-{k}"), "groups": [{"replicas": 1, "accelerators": 2, "models": ["RNGD"]}],
                       "runtime_estimate_s": 20, "runtime_limit_s": 60,
                       "command": sh("echo serving on NPUs $GOSOK_VISIBLE_DEVICES; sleep 15")}),
            ),
        ]
    };
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        for (tenant, spec) in wave(k) {
            let Some(tok) = creds.tenant_tokens.get(tenant) else {
                continue;
            };
            if let Err(e) = Api::new(&creds.url, tok).call("POST", "/v1/jobs", Some(&spec)) {
                eprintln!("gosok up: demo workload: {e:#}");
            }
        }
        for _ in 0..100 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn run(a: UpArgs) -> anyhow::Result<()> {
    // The port first: a start that cannot listen must not create a store or a token.
    std::net::TcpListener::bind(&a.listen).with_context(|| {
        format!(
            "cannot listen on {} (another gosok up or server there? --listen ADDR picks another); nothing was created",
            a.listen
        )
    })?;
    let d = DataDir(a.data_dir.clone());
    let first = !d.db().exists();
    if first {
        gosok_server::init(&a.data_dir)?;
    }
    let admin = std::fs::read_to_string(d.admin_token())
        .with_context(|| format!("cannot read {}", d.admin_token().display()))?
        .trim()
        .to_string();
    let mut cfg = Config::load(&d.config(), false)?;
    cfg.listen = a.listen.clone();
    crate::server_cmd::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Ctrl-C and SIGTERM are caught from here on: the streams keep a signal that arrives
    // while nothing waits on them (a ctrl_c() made afresh in a loop would miss it).
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let running = rt.block_on(gosok_server::start(&a.data_dir, cfg))?;
    let url = format!("http://{}", running.addr);
    let creds = provision(&a.data_dir, &url, &admin, a.scale)?;
    let mut agents = spawn_agents(&a.data_dir, &url, &creds.agent_tokens, a.scale)?;
    let racks = demo_racks(a.scale);
    let nodes: u64 = racks.iter().map(|r| r.nodes).sum();
    println!(
        "gosok up: a local highway is running{}",
        if first { "" } else { " (resumed)" }
    );
    println!("  console:      {url}/   (sign in with a token below)");
    println!("  API:          {url}");
    println!("  admin token:  {}", creds.admin_token);
    for (t, tok) in &creds.tenant_tokens {
        println!("  tenant {t:<14} {tok}");
    }
    println!(
        "  sites pohang, jeonnam, ulsan (KR): {} racks, {nodes} nodes; agent logs in {}",
        racks.len(),
        a.data_dir.join("logs").display()
    );
    println!(
        "  credentials:  {}",
        a.data_dir.join("credentials.toml").display()
    );
    if sandboxed() {
        println!(
            "  isolation:    sandbox (each task as its tenant's account, in its own control group)"
        );
    } else {
        println!(
            "  isolation:    none (not root: tasks run as your user, unisolated; run as root for the sandbox)"
        );
    }
    let creds_path = std::path::absolute(a.data_dir.join("credentials.toml"))?;
    println!(
        "  try:          export GOSOK_CONFIG={}   (a client config as it is)",
        creds_path.display()
    );
    println!(
        "                gosok --as seoul-startup submit --accelerators 1 -- echo hello; gosok --as seoul-startup jobs"
    );
    println!("Ctrl-C stops everything; `gosok up` again on the same data directory resumes.");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = a.demo_workload.then(|| {
        let stop = stop.clone();
        let creds = Credentials {
            url: creds.url.clone(),
            admin_token: String::new(),
            agent_tokens: BTreeMap::new(),
            tenant_tokens: creds.tenant_tokens.clone(),
        };
        std::thread::spawn(move || demo_workload(&creds, &stop))
    });
    rt.block_on(async {
        let mut check = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = check.tick() => {
                    for c in agents.iter_mut() {
                        if let Ok(Some(s)) = c.try_wait() {
                            eprintln!("gosok up: an agent (pid {}) exited: {s}; see {}", c.id(), a.data_dir.join("logs").display());
                        }
                    }
                    agents.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                }
            }
        }
        anyhow::Ok(())
    })?;
    eprintln!("gosok up: stopping the agents and their tasks, then the controller");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_agents(&mut agents, Duration::from_secs(15));
    if let Some(w) = workload {
        let _ = w.join();
    }
    rt.block_on(running.stop())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_highways_are_valid_and_sized_as_promised() {
        let small = demo_cluster(Scale::Small).unwrap();
        let large = demo_cluster(Scale::Large).unwrap();
        let cat = gosok_model::Catalog::builtin();
        let n_small = small.resolve(&cat).unwrap().len();
        let n_large = large.resolve(&cat).unwrap().len();
        assert!((6..=20).contains(&n_small), "{n_small}");
        assert!(n_large >= 2000, "{n_large}");
        let sites: Vec<&str> = small.site.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sites, ["pohang", "jeonnam", "ulsan"]);
        for m in ["H100", "H200", "B200", "RNGD"] {
            assert!(
                small
                    .node
                    .iter()
                    .any(|n| n.accelerator.as_deref() == Some(m))
            );
        }
        assert_eq!(small.tenant.len(), 4);
    }
}
