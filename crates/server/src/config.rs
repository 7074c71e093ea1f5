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
        Ok(())
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
