//! Server configuration: a TOML file (by default `DATA_DIR/gosok.toml`) and flags on top.

use std::path::{Path, PathBuf};

use gosok_engine::EngineConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve on.
    pub listen: String,
    /// How often the scheduling loop wakes: a pass runs then if something changed.
    pub tick_ms: u64,
    /// After a change (a submission, a cancel, a node coming up) the next pass runs this soon.
    pub min_tick_gap_ms: u64,
    /// While nothing changes but work waits or runs, the clock is advanced (and a pass run)
    /// this often: runtime limits are enforced to within it. Each tick is a log record.
    pub idle_tick_ms: u64,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Submissions per second one tenant may sustain (429 with Retry-After beyond).
    pub submit_rate_per_s: f64,
    /// Submissions one tenant may make in a burst.
    pub submit_burst: f64,
    /// Whether GET /metrics needs an admin token.
    pub metrics_require_token: bool,
    /// Most log records written in one transaction (one fsync).
    pub max_commit_batch: usize,
    /// How long a node agent's lease lasts without a sync: its tasks run on through a
    /// controller outage (or restart) this long less one sync interval (at most 30 s), and a
    /// silent node's tasks are requeued this long (plus the margin) after it was last heard
    /// from. The default tolerates an outage of at least 5 minutes (Slurm's `SlurmdTimeout`
    /// is 300 s).
    pub agent_lease_ms: u64,
    /// How much longer than the lease the controller waits before it requeues a silent
    /// node's tasks: the agent (or its watchdog, if it is frozen) has killed them by then,
    /// whatever the delays of scheduling and clocks, so that a task never runs twice.
    pub agent_lease_margin_ms: u64,
    /// Between SIGTERM and SIGKILL when an agent stops a task (cancel, preemption, limit).
    pub task_grace_s: u64,
    /// A snapshot of the state is written after this many log records (and at a clean
    /// shutdown), so that a start replays at most about this many; 0: never.
    pub snapshot_every_records: u64,
    /// Jobs one tenant may have pending at once, unless its spec says otherwise
    /// (`max_pending_jobs`); 429 beyond.
    pub max_pending_jobs_per_tenant: u64,
    /// Bytes of command, env and workdir one job may carry, unless its tenant's spec says
    /// otherwise (`max_job_bytes`); 413 beyond.
    pub max_job_bytes: u64,
    /// Bytes of command, env and workdir over one tenant's pending and running jobs, unless
    /// its spec says otherwise (`max_stored_bytes`); 413 beyond.
    pub max_stored_bytes_per_tenant: u64,
    /// New submissions are refused (507) while the data directory's file system has less
    /// free space than this many MiB...
    pub min_free_disk_mib: u64,
    /// ...or less than this fraction of its size free. Everything else goes on.
    pub min_free_disk_fraction: f64,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed at once.
    pub max_connections_per_address: usize,
    /// A new connection must send a whole request head within this, and so must the next
    /// request on a kept-alive connection once its first byte arrives.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request body must arrive whole within this (408 beyond).
    pub body_read_timeout_ms: u64,
    /// A request must be answered within this (503 beyond); more than an agent's long poll.
    pub request_timeout_ms: u64,
    /// Log reads proxied to agents at once (each may wait up to 5 s on its agent); 503 beyond.
    pub max_log_fetches: usize,
    /// The same against one agent.
    pub max_log_fetches_per_agent: usize,
    /// Serve HTTPS with this certificate chain (PEM) and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where the event log and snapshots live: "sqlite" (`gosok.db` in the data directory,
    /// one controller) or a PostgreSQL URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`),
    /// which several controller replicas share, one of them leading.
    pub store: String,
    /// With a PostgreSQL store: the URL the other replicas reach this one at (followers
    /// forward requests to the leader there). Default: http(s)://LISTEN.
    pub advertise_url: Option<String>,
    /// With a PostgreSQL store: how long a leader's lease lasts unrenewed. It is renewed
    /// every quarter of this; a follower takes over about this long after the leader died or
    /// froze, and a leader cut from PostgreSQL stops leading before then.
    pub leader_lease_ms: u64,
    pub engine: EngineConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            tick_ms: 1000,
            min_tick_gap_ms: 100,
            idle_tick_ms: 5000,
            max_body_bytes: 1 << 20,
            submit_rate_per_s: 100.0,
            submit_burst: 1000.0,
            metrics_require_token: true,
            max_commit_batch: 8192,
            agent_lease_ms: 330_000,
            agent_lease_margin_ms: 5_000,
            task_grace_s: 10,
            snapshot_every_records: 100_000,
            max_pending_jobs_per_tenant: 10_000,
            max_job_bytes: 512 * 1024,
            max_stored_bytes_per_tenant: 64 << 20,
            min_free_disk_mib: 512,
            min_free_disk_fraction: 0.02,
            max_connections: 4096,
            max_connections_per_address: 256,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            max_log_fetches: 32,
            max_log_fetches_per_agent: 4,
            tls_cert: None,
            tls_key: None,
            store: "sqlite".into(),
            advertise_url: None,
            leader_lease_ms: 2000,
            engine: EngineConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing default file is not an error (the defaults apply).
    pub fn load(path: &Path, must_exist: bool) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default());
            }
            Err(e) => anyhow::bail!("cannot read the configuration {}: {e}", path.display()),
        };
        let c: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.tick_ms >= 10, "tick_ms: at least 10 ms");
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "max_body_bytes: at least 1024 bytes"
        );
        anyhow::ensure!(
            self.submit_rate_per_s > 0.0 && self.submit_rate_per_s.is_finite(),
            "submit_rate_per_s: must be a positive number"
        );
        anyhow::ensure!(
            self.submit_burst >= 1.0 && self.submit_burst.is_finite(),
            "submit_burst: at least 1"
        );
        anyhow::ensure!(self.max_commit_batch >= 1, "max_commit_batch: at least 1");
        anyhow::ensure!(
            (300..=3_600_000).contains(&self.agent_lease_ms),
            "agent_lease_ms: 300 to 3600000"
        );
        anyhow::ensure!(
            (100..=600_000).contains(&self.agent_lease_margin_ms),
            "agent_lease_margin_ms: 100 to 600000"
        );
        anyhow::ensure!(self.task_grace_s <= 3600, "task_grace_s: at most 3600");
        anyhow::ensure!(
            self.max_pending_jobs_per_tenant >= 1,
            "max_pending_jobs_per_tenant: at least 1"
        );
        anyhow::ensure!(self.max_job_bytes >= 1024, "max_job_bytes: at least 1024");
        anyhow::ensure!(
            self.max_stored_bytes_per_tenant >= 1024,
            "max_stored_bytes_per_tenant: at least 1024"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.min_free_disk_fraction),
            "min_free_disk_fraction: from 0 up to (not including) 1"
        );
        anyhow::ensure!(self.max_connections >= 1, "max_connections: at least 1");
        anyhow::ensure!(
            (1..=self.max_connections).contains(&self.max_connections_per_address),
            "max_connections_per_address: 1 to max_connections"
        );
        for (name, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            anyhow::ensure!((100..=3_600_000).contains(&v), "{name}: 100 to 3600000 ms");
        }
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key: give both (HTTPS) or neither (HTTP)"
        );
        anyhow::ensure!(
            (1..=self.max_log_fetches).contains(&self.max_log_fetches_per_agent),
            "max_log_fetches_per_agent: 1 to max_log_fetches"
        );
        anyhow::ensure!(
            self.max_log_fetches <= 256,
            "max_log_fetches: at most 256 (each holds a blocking thread)"
        );
        crate::replica::StoreKind::parse(&self.store)?;
        anyhow::ensure!(
            (500..=60_000).contains(&self.leader_lease_ms),
            "leader_lease_ms: 500 to 60000"
        );
        anyhow::ensure!(
            self.request_timeout_ms > self.max_long_poll_ms() + 1000,
            "request_timeout_ms: must exceed an agent's longest long poll (agent_lease_ms / 3, at most 30000) by a second"
        );
        Ok(())
    }
}

impl Config {
    /// The longest an agent's sync is held: a third of the lease, so that a healthy agent
    /// renews three times per lease, and at most 30 s, so that it renews at least that often.
    pub fn max_long_poll_ms(&self) -> u64 {
        (self.agent_lease_ms / 3).min(30_000)
    }
}

/// The files of a data directory.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn db(&self) -> PathBuf {
        self.0.join("gosok.db")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("gosok.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/server.toml");
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.engine.fair_share_half_life_s, 604_800);
        assert!(Config::load(Path::new("/nonexistent/gosok.toml"), false).is_ok());
        assert!(Config::load(Path::new("/nonexistent/gosok.toml"), true).is_err());
    }

    #[test]
    fn unknown_keys_and_silly_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gosok.toml");
        std::fs::write(&p, "listen = \"x\"\ncolour = 1\n").unwrap();
        assert!(
            Config::load(&p, true)
                .unwrap_err()
                .to_string()
                .contains("colour")
        );
        std::fs::write(&p, "tick_ms = 0\n").unwrap();
        assert!(
            Config::load(&p, true)
                .unwrap_err()
                .to_string()
                .contains("tick_ms")
        );
    }
}
