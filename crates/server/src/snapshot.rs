//! When the controller takes snapshots, where it writes them, and how a start uses them.
//!
//! A snapshot is taken under the core lock once `snapshot_every_records` records were
//! applied since the last one (checked after each tick) and at a clean shutdown. Taking it
//! only encodes the state ([`Core::snapshot`]); the bytes are written on a thread of their
//! own with a second store handle, after the log is durable up to the snapshot's sequence
//! number, so that a snapshot never describes a record that a crash could still lose. The
//! store keeps the latest few. At start the latest one is restored and only the records
//! after it are replayed; one of another format or engine configuration is reported and the
//! whole log is replayed instead. A snapshot that fails its checksum, or one that covers
//! records the log does not have (the log lost its tail), stops the start with a message
//! that says what was found and what to do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gosok_store::{Snapshot, Store};

use crate::App;
use crate::config::Config;
use crate::core::{Core, SpecSource};

/// A snapshot encoded under the core lock, to be written.
pub struct Taken {
    pub seq: u64,
    pub body: Vec<u8>,
    /// How long the core lock was held to encode it.
    pub took: Duration,
}

pub fn take(core: &Core) -> anyhow::Result<Taken> {
    let t = Instant::now();
    let body = core.snapshot()?;
    Ok(Taken {
        seq: core.seq(),
        body,
        took: t.elapsed(),
    })
}

/// Stores a snapshot whose records are already durable; returns its size and how long the
/// write took.
pub fn put(store: &mut dyn Store, s: Taken) -> anyhow::Result<(usize, Duration)> {
    let t = Instant::now();
    let bytes = s.body.len();
    store.put_snapshot(&Snapshot {
        seq: s.seq,
        at_ms: crate::unix_ms(),
        body: s.body,
    })?;
    Ok((bytes, t.elapsed()))
}

/// The server's snapshot schedule and its own store handle.
pub struct Snapshots {
    every: u64,
    /// Sequence number of the latest snapshot taken (or loaded at start).
    last: AtomicU64,
    /// A snapshot is being written: no other is taken meanwhile.
    writing: Arc<AtomicBool>,
    store: Arc<Mutex<Box<dyn Store>>>,
}

impl Snapshots {
    pub fn new(store: Box<dyn Store>, every: u64, last: u64) -> Snapshots {
        Snapshots {
            every,
            last: AtomicU64::new(last),
            writing: Arc::new(AtomicBool::new(false)),
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// Whether a snapshot is due now that the core has applied up to `seq`.
    pub fn due(&self, seq: u64) -> bool {
        self.every > 0
            && seq >= self.last.load(Ordering::Relaxed).saturating_add(self.every)
            && !self.writing.load(Ordering::Acquire)
    }

    /// Takes a snapshot of `core` (the caller holds the core lock) and writes it in the
    /// background once the log is durable up to it.
    pub fn start(&self, app: &Arc<App>, core: &Core) {
        let taken = match take(core) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot take a snapshot: {e:#}");
                return;
            }
        };
        self.last.store(taken.seq, Ordering::Relaxed);
        self.writing.store(true, Ordering::Release);
        let (app, writing, store) = (app.clone(), self.writing.clone(), self.store.clone());
        let spawned = std::thread::Builder::new()
            .name("gosok-snapshot".into())
            .spawn(move || {
                let (seq, took) = (taken.seq, taken.took);
                let r = app
                    .log
                    .wait_durable(seq)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        let mut s = store.lock().unwrap_or_else(PoisonError::into_inner);
                        put(s.as_mut(), taken)
                    });
                match r {
                    Ok((bytes, wrote)) => tracing::info!(
                        seq,
                        bytes,
                        encode_ms = took.as_millis() as u64,
                        write_ms = wrote.as_millis() as u64,
                        "snapshot written"
                    ),
                    // The log is the truth: a missing snapshot costs a longer start only.
                    Err(e) => tracing::warn!(seq, "cannot write a snapshot: {e:#}"),
                }
                writing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the snapshot writer: {e}");
            self.writing.store(false, Ordering::Release);
        }
    }

    /// At a clean shutdown: a snapshot of the final state, unless the latest one is it.
    pub fn at_shutdown(&self, app: &App) -> anyhow::Result<()> {
        if self.every == 0 {
            return Ok(());
        }
        let taken = {
            let core = app.core();
            if core.seq() <= self.last.load(Ordering::Relaxed) {
                return Ok(());
            }
            take(&core)?
        };
        app.log.wait_durable(taken.seq)?;
        // Waits for a snapshot still being written, if any.
        let (seq, took) = (taken.seq, taken.took);
        let mut s = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let (bytes, wrote) = put(s.as_mut(), taken)?;
        self.last.store(seq, Ordering::Relaxed);
        tracing::info!(
            seq,
            bytes,
            encode_ms = took.as_millis() as u64,
            write_ms = wrote.as_millis() as u64,
            "snapshot written at shutdown"
        );
        Ok(())
    }
}

/// Where a start begins: a fresh core, or the latest snapshot restored.
pub struct Start {
    pub core: Core,
    /// The last record the core has applied (0 for a fresh core).
    pub seq: u64,
    /// How long reading and restoring the snapshot took (zero without one).
    pub elapsed: Duration,
}

/// The core to replay the log onto: restored from the latest snapshot when there is one
/// that this gosok can read, else fresh. `source` makes the core's spec source.
pub fn load(
    store: &mut dyn Store,
    cfg: &Config,
    source: &mut dyn FnMut() -> anyhow::Result<SpecSource>,
) -> anyhow::Result<Start> {
    let t = Instant::now();
    let fresh = |source: &mut dyn FnMut() -> anyhow::Result<SpecSource>| {
        let core = Core::new(cfg.engine.clone(), source()?)
            .map_err(|e| anyhow::anyhow!("engine configuration: {}", e.message))?;
        anyhow::Ok(Start {
            core,
            seq: 0,
            elapsed: Duration::ZERO,
        })
    };
    let snap = match store.latest_snapshot() {
        Ok(Some(s)) => s,
        Ok(None) => return fresh(source),
        Err(gosok_store::StoreError::Corrupt(e)) => anyhow::bail!(
            "{e}. The controller does not start on damaged files. The log alone holds the whole \
             history: `gosok server recover --data-dir DIR --drop-snapshots` drops the damaged \
             snapshot (the log is then replayed from an older one or from its start), as does \
             moving the snapshot file aside; or restore the data directory from a backup"
        ),
        Err(e) => {
            tracing::warn!("cannot read the latest snapshot ({e}); replaying the whole log");
            return fresh(source);
        }
    };
    let last = store.last_seq()?;
    if snap.seq > last {
        // Records the snapshot covers are missing from the log: acknowledged changes were
        // lost, and serving on would hand out their job ids again.
        anyhow::bail!(
            "the event log ends at record {last} but the latest snapshot covers records up to {}: \
             the log lost its last {} records (was gosok.db-wal deleted or truncated, or gosok.db \
             restored without it?). The controller does not start on a log behind its snapshot: \
             restore the data directory (gosok.db with its gosok.db-wal) from a backup. Only if \
             losing those records and reusing their ids is acceptable, `gosok server recover \
             --data-dir DIR --drop-snapshots` serves the log as it is",
            snap.seq,
            snap.seq - last
        );
    }
    match Core::restore(&snap.body, cfg.engine.clone(), source()?) {
        Ok(core) if core.seq() == snap.seq => {
            let elapsed = t.elapsed();
            tracing::info!(
                seq = snap.seq,
                bytes = snap.body.len(),
                ms = elapsed.as_millis() as u64,
                "restored the snapshot"
            );
            Ok(Start {
                core,
                seq: snap.seq,
                elapsed,
            })
        }
        Ok(core) => {
            tracing::warn!(
                snapshot = snap.seq,
                core = core.seq(),
                "the latest snapshot does not say what it holds; replaying the whole log"
            );
            fresh(source)
        }
        Err(e) => {
            tracing::warn!(
                seq = snap.seq,
                "the latest snapshot cannot be used ({e:#}); replaying the whole log"
            );
            fresh(source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use gosok_store::{Record, SqliteStore};

    /// A store with a topology and 320 records of submissions and ticks, with snapshots every
    /// 50 records as the server takes them.
    fn store(cfg: &Config) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        crate::init(dir.path()).unwrap();
        let db = crate::config::DataDir(dir.path().to_path_buf()).db();
        let mut store = SqliteStore::open(&db).unwrap();
        let topology = Entry::Topology {
            cluster: gosok_model::ClusterSpec::from_toml(crate::core::tests::CLUSTER).unwrap(),
            by: "admin".into(),
        };
        store
            .append(&[Record {
                seq: 2,
                at_ms: 0,
                kind: topology.kind().into(),
                body: serde_json::to_vec(&topology).unwrap(),
            }])
            .unwrap();
        let spec: gosok_model::JobSpec = serde_json::from_value(serde_json::json!({
            "groups": [{"replicas": 1, "accelerators": 3, "models": ["H100"]}]
        }))
        .unwrap();
        drop(store);
        crate::fill_log(dir.path(), cfg, &["lab".into()], &spec, 320, 7).unwrap();
        (dir, SqliteStore::open(&db).unwrap())
    }

    fn observed(c: &Core) -> String {
        let jobs: Vec<_> = (1..c.next_job_id())
            .map(|id| {
                c.job(id)
                    .map(|j| (j.state, j.placement.clone(), j.history.len()))
            })
            .collect();
        let queue = crate::api::queue_json(c, None, usize::MAX).unwrap();
        format!(
            "{jobs:?} {} {} {}",
            String::from_utf8_lossy(&queue),
            c.seq(),
            c.now_s()
        )
    }

    #[test]
    fn a_start_restores_the_latest_snapshot_else_replays_the_whole_log() {
        let cfg = Config {
            snapshot_every_records: 50,
            ..Config::default()
        };
        let (_dir, mut store) = store(&cfg);
        let latest = store.latest_snapshot().unwrap().unwrap().seq;
        assert!((270..320).contains(&latest), "{latest}");

        let (core, last, stats) = crate::replay(&mut store, &cfg).unwrap();
        assert_eq!((last, stats.snapshot_seq), (320, latest));
        let from_snapshot = observed(&core);
        assert!(core.engine().pending_count() > 0 && core.job(1).is_some());

        // Another engine configuration: the snapshot does not apply, the log does.
        let other = Config {
            engine: gosok_engine::EngineConfig {
                seed: 9,
                ..cfg.engine.clone()
            },
            ..cfg.clone()
        };
        let (_, last, stats) = crate::replay(&mut store, &other).unwrap();
        assert_eq!((last, stats.snapshot_seq), (320, 0));

        // A damaged latest snapshot: the whole log, and the same state.
        store
            .put_snapshot(&Snapshot {
                seq: 319,
                at_ms: 0,
                body: b"gosokCOR\x01\x00\x00\x00garbage".to_vec(),
            })
            .unwrap();
        let (core, last, stats) = crate::replay(&mut store, &cfg).unwrap();
        assert_eq!((last, stats.snapshot_seq), (320, 0));
        assert_eq!(observed(&core), from_snapshot);

        // A snapshot ahead of the log (the log lost its tail): the start refuses.
        store
            .put_snapshot(&Snapshot {
                seq: 400,
                at_ms: 0,
                body: b"gosokCOR".to_vec(),
            })
            .unwrap();
        let e = crate::replay(&mut store, &cfg).err().unwrap().to_string();
        assert!(
            e.contains("ends at record 320") && e.contains("up to 400") && e.contains("backup"),
            "{e}"
        );
    }
}
