//! `gosok server`: the highway's controller.
//!
//! It owns the state (an event log in the store, replayed into the engine at start), runs the
//! engine against the real clock (a pass at least every `tick_ms` while work waits or runs),
//! and serves tenants and operators over a JSON HTTP API under `/v1`.
//!
//! Write path: a handler checks the request, then under the core lock applies a log
//! [`entry::Entry`] to the [`core::Core`] and hands the entry to the group-commit writer
//! (so the log's order is the order of application); it answers only once the writer says
//! the entry's sequence number is durable. A failed write stops the server (fail-stop):
//! nothing unacknowledged is ever answered as done.

pub mod accounting;
pub mod agents;
pub mod api;
pub mod auth;
pub mod backup;
pub mod config;
pub mod console;
pub mod core;
pub mod dates;
pub mod disk;
pub mod entry;
pub mod error;
pub mod fetches;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod replica;
pub mod snapshot;
pub mod usage;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use gosok_store::{CommitError, GroupCommit, Record, SqliteStore, Store};
use tokio::sync::{Notify, watch};

use crate::config::{Config, DataDir};
use crate::core::{Applied, Core, Refusal};
use crate::entry::{Entry, LOG_FORMAT, TokenEntry};
use crate::error::ApiError;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The engine's clock: the wall clock is read once, at start (never behind the time the log
/// last recorded), and from then on time advances by the monotonic clock. A step of the wall
/// clock while the controller runs, either way, neither jumps the engine forward (killing
/// jobs at their runtime limits early) nor freezes it; the wall clock only names times
/// (`at_ms` of records, submission and end times).
pub struct EngineClock {
    base_ms: u64,
    at: Instant,
}

impl EngineClock {
    /// Starts at the wall clock `wall_ms`, or at `logged_now_s` if that is later.
    pub fn new(wall_ms: u64, logged_now_s: u64) -> EngineClock {
        EngineClock {
            base_ms: wall_ms.max(logged_now_s.saturating_mul(1000)),
            at: Instant::now(),
        }
    }

    /// Engine time after `elapsed` of monotonic time since the start.
    pub fn after(&self, elapsed: Duration) -> u64 {
        (self.base_ms + elapsed.as_millis() as u64) / 1000
    }

    pub fn now_s(&self) -> u64 {
        self.after(self.at.elapsed())
    }
}

/// Creates the store in `dir` with its first admin token; returns the token (shown once)
/// and writes it to `dir/admin.token` (mode 0600).
pub fn init(dir: &Path) -> anyhow::Result<String> {
    init_store(dir, "sqlite")
}

/// [`init`] with the store chosen: "sqlite" (in `dir`) or a PostgreSQL URL (`dir` then
/// holds the admin token and the configuration only).
pub fn init_store(dir: &Path, store: &str) -> anyhow::Result<String> {
    let kind = replica::StoreKind::parse(store)?;
    let d = DataDir(dir.to_path_buf());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let mut store = kind.open(dir)?;
    if store.last_seq()? > 0 {
        anyhow::bail!(
            "{} already holds a highway; `gosok server run --data-dir {}{}` serves it",
            kind.describe(dir),
            dir.display(),
            kind.flag()
        );
    }
    store.set_meta("log_format", LOG_FORMAT)?;
    let (token, entry) = auth::new_token("admin-1", None, false);
    let e = Entry::Init {
        now_s: unix_ms() / 1000,
        admin_token: entry,
    };
    store.append(&[Record {
        seq: 1,
        at_ms: unix_ms(),
        kind: e.kind().into(),
        body: serde_json::to_vec(&e)?,
    }])?;
    write_private(&d.admin_token(), format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Writes a file only its owner may read (mode 0600), durably: tokens and credentials.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Rebuilds the core: from the latest snapshot when there is a usable one, then the log
/// records after it (all of them without a snapshot).
pub fn replay(store: &mut dyn Store, cfg: &Config) -> anyhow::Result<(Core, u64, ReplayStats)> {
    if let Some(f) = store.meta("log_format")?
        && f != LOG_FORMAT
    {
        anyhow::bail!("the store's log format is {f}; this gosok reads format {LOG_FORMAT}");
    }
    let t = Instant::now();
    let reader = store.reopen()?;
    let mut source = || -> anyhow::Result<core::SpecSource> {
        let mut specs = reader.reopen()?;
        Ok(Box::new(move |seq| {
            let r = specs.get(seq).ok()??;
            match serde_json::from_slice::<Entry>(&r.body) {
                Ok(Entry::Submit { spec, .. }) => Some(*spec),
                _ => None,
            }
        }))
    };
    let snapshot::Start {
        mut core,
        seq: from,
        elapsed: snapshot_elapsed,
    } = snapshot::load(store, cfg, &mut source)?;
    drop(reader);
    let mut last = from;
    let mut diverged = 0u64;
    // At most one job per record; room not used costs address space, not memory.
    core.reserve_jobs(store.last_seq()?.saturating_sub(from).min(1 << 24) as usize);
    // Reading and decoding run on a second thread while this one applies: on two cores a
    // long log replays in about the time the engine needs for its events. Batches go back to
    // the reader to be refilled, so that no large block is allocated per batch.
    const BATCH: usize = 1024;
    // A second thread reads and decodes while this one applies. Each decoded entry goes back
    // to the reader, which drops it where it was allocated (the core copies what it keeps):
    // with the system allocator, freeing on another thread contends for the allocating
    // thread's arena and costs more than the copy.
    type Batch = Vec<(u64, u64, Entry)>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(8);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Batch>();
    let read = std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(), gosok_store::StoreError> {
            let mut batch = Vec::with_capacity(BATCH);
            store.scan(from, &mut |r| {
                let entry: Entry = serde_json::from_slice(&r.body).map_err(|e| {
                    gosok_store::StoreError::Corrupt(format!(
                        "record {} cannot be read: {e}",
                        r.seq
                    ))
                })?;
                batch.push((r.seq, r.at_ms, entry));
                if batch.len() == BATCH {
                    let next = back_rx
                        .try_recv()
                        .map(|mut b: Batch| {
                            b.clear();
                            b
                        })
                        .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                    if tx.send(std::mem::replace(&mut batch, next)).is_err() {
                        return Err(gosok_store::StoreError::Corrupt("replay stopped".into()));
                    }
                }
                Ok(())
            })?;
            let _ = tx.send(batch);
            drop(tx);
            // Drop what comes back here, until the applier is done.
            while back_rx.recv().is_ok() {}
            Ok(())
        });
        for batch in rx {
            for (seq, at_ms, entry) in &batch {
                if let Err(e) = core.apply(*seq, *at_ms, entry) {
                    // It was applied without error when it was written; the engine must
                    // have changed its mind. Keep going: the rest of the log still applies.
                    diverged += 1;
                    tracing::warn!(seq, kind = entry.kind(), "replay refused: {}", e.message);
                }
                core.set_seq(*seq);
                last = *seq;
            }
            let _ = back_tx.send(batch);
        }
        drop(back_tx);
        reader.join().unwrap_or_else(|_| {
            Err(gosok_store::StoreError::Corrupt(
                "the reader panicked".into(),
            ))
        })
    });
    read.map_err(|e| {
        anyhow::anyhow!(
            "{e}. The controller does not start on a damaged log: restore the data directory \
             from a backup, or see `gosok server recover --data-dir DIR` for what can be dropped"
        )
    })?;
    if !core.initialised() {
        anyhow::bail!("the store is empty: run `gosok server init --data-dir DIR` first");
    }
    Ok((
        core,
        last,
        ReplayStats {
            records: last,
            diverged,
            elapsed: t.elapsed(),
            snapshot_seq: from,
            snapshot_elapsed,
        },
    ))
}

/// What `verify` found in a healthy data directory.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Records in the log, every one read and its checksum checked.
    pub records: u64,
    /// The latest snapshot's sequence number (0: none), checked and restored.
    pub snapshot_seq: u64,
    /// Records the engine refused on replay (should be 0).
    pub diverged: u64,
}

/// The store file of a data directory that must already have one (verify, recover).
fn existing_db(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let db = DataDir(dir.to_path_buf()).db();
    anyhow::ensure!(
        db.exists(),
        "{} has no store (no {})",
        dir.display(),
        db.display()
    );
    Ok(db)
}

/// Checks a data directory offline, as a start would and more: every log record (checksum,
/// no gap, decodes as an entry), the latest snapshot (checksum, not ahead of the log,
/// restores), and a replay of the records after it. Writes nothing to the log.
pub fn verify(dir: &Path, cfg: &Config) -> anyhow::Result<Verified> {
    let mut store = SqliteStore::open(&existing_db(dir)?)?;
    let mut records = 0u64;
    store
        .scan(0, &mut |r| {
            serde_json::from_slice::<Entry>(&r.body).map_err(|e| {
                gosok_store::StoreError::Corrupt(format!(
                    "record {} is not a log entry: {e}",
                    r.seq
                ))
            })?;
            records = r.seq;
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, _, stats) = replay(&mut store, cfg)?;
    Ok(Verified {
        records,
        snapshot_seq: stats.snapshot_seq,
        diverged: stats.diverged,
    })
}

/// The repairs an operator may choose in `gosok server recover`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoverChoices {
    /// Drop the log from its first bad or missing record on (and the snapshots that cover
    /// any of it).
    pub truncate_log: bool,
    /// Drop snapshots that fail their checksum or cover records the log does not have.
    pub drop_snapshots: bool,
}

/// Repairs a damaged data directory as `choices` allow, writing what it did to the log (the
/// audit log) as a `recovered` entry; refuses, naming the choice needed, when the damage
/// needs a repair not chosen. Returns what it did. Holds the data directory's lock.
pub fn recover(dir: &Path, cfg: &Config, choices: RecoverChoices) -> anyhow::Result<String> {
    let db = existing_db(dir)?;
    let _lock = lock_data_dir(dir)?;
    let mut store = SqliteStore::open(&db)?;
    let last = store.last_seq()?;
    let mut reasons = Vec::new();
    let mut dropped_records = None;
    let mut dropped_snapshots = Vec::new();
    if let Some(damage) = store.damage()? {
        anyhow::ensure!(
            damage.from > 1,
            "{}: the log's first record is damaged, so nothing of it can be kept; restore the data directory from a backup",
            damage.what
        );
        anyhow::ensure!(
            choices.truncate_log,
            "the log is damaged from record {}: {}. Choose: restore the data directory from a \
             backup; or `gosok server recover --data-dir {} --truncate-log`, which drops records \
             {}..={last} (their changes are lost, and job ids they gave may be given again) and \
             the snapshots that cover any of them",
            damage.from,
            damage.what,
            dir.display(),
            damage.from,
        );
        store.truncate_from(damage.from)?;
        dropped_records = Some([damage.from, last]);
        reasons.push(damage.what);
    }
    let end = store.last_seq()?;
    for (seq, ok) in store.snapshot_list()? {
        if ok && seq <= end {
            continue;
        }
        let covers_dropped = dropped_records.is_some_and(|[from, _]| seq >= from);
        if !covers_dropped {
            let what = if ok {
                format!(
                    "the snapshot of record {seq} covers records the log does not have (it ends at {end})"
                )
            } else {
                format!("the snapshot of record {seq} fails its checksum")
            };
            anyhow::ensure!(
                choices.drop_snapshots,
                "{what}. Choose: restore the data directory from a backup; or `gosok server \
                 recover --data-dir {} --drop-snapshots`, which drops it{}",
                dir.display(),
                if ok {
                    " and serves the log as it is (the records after it are lost, and job ids they gave may be given again)"
                } else {
                    " (the log is replayed from an older snapshot or from its start)"
                }
            );
            reasons.push(what);
        }
        store.delete_snapshot(seq)?;
        dropped_snapshots.push(seq);
    }
    if reasons.is_empty() {
        return Ok(format!("{}: nothing to recover", dir.display()));
    }
    let entry = Entry::Recovered {
        dropped_records,
        dropped_snapshots: dropped_snapshots.clone(),
        reason: reasons.join("; "),
        by: "gosok server recover".into(),
    };
    let seq = store.last_seq()? + 1;
    store.append(&[Record {
        seq,
        at_ms: unix_ms(),
        kind: entry.kind().into(),
        body: serde_json::to_vec(&entry)?,
    }])?;
    drop(store);
    let v = verify(dir, cfg)?;
    Ok(format!(
        "{}: {}dropped snapshots {:?}; wrote record {seq} (\"recovered\") to the log; the log now holds {} records and verifies",
        dir.display(),
        match dropped_records {
            Some([a, b]) => format!("dropped records {a}..={b}; "),
            None => String::new(),
        },
        dropped_snapshots,
        v.records
    ))
}

#[derive(Debug, Clone, Copy)]
pub struct ReplayStats {
    /// The last record applied.
    pub records: u64,
    pub diverged: u64,
    pub elapsed: Duration,
    /// The snapshot started from (0: none; every record was replayed).
    pub snapshot_seq: u64,
    /// How long reading and restoring it took (part of `elapsed`).
    pub snapshot_elapsed: Duration,
}

/// Per-tenant token buckets for submissions.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<std::collections::HashMap<Arc<str>, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(Default::default()),
        }
    }
    /// Ok, or the seconds until one more submission is allowed.
    pub fn take(&self, tenant: &Arc<str>) -> Result<(), u64> {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let e = b.entry(tenant.clone()).or_insert((self.burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * self.rate).min(self.burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - e.0) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Everything the handlers share.
pub struct App {
    pub cfg: Config,
    core: Mutex<Core>,
    log: GroupCommit,
    durable: watch::Receiver<u64>,
    /// A second store handle for reads (job specs of ended jobs, the audit log).
    reader: Mutex<Box<dyn Store>>,
    pub metrics: metrics::Metrics,
    pub limiter: RateLimiter,
    tick: Notify,
    pub started: Instant,
    pub replay: ReplayStats,
    pub agents: agents::Agents,
    pub snapshots: snapshot::Snapshots,
    /// The free space of the data directory's file system against the watermark.
    pub disk: disk::DiskWatch,
    /// What the HTTP limits did.
    pub http: Arc<http::Stats>,
    /// Log reads proxied to agents, in flight.
    pub log_fetches: Arc<fetches::FetchLimit>,
    /// What ticks advance the engine to.
    pub clock: EngineClock,
}

impl App {
    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn reader(&self) -> MutexGuard<'_, Box<dyn Store>> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `entry` and queues it for the log, under the caller's core lock (so that the
    /// log's order is the order of application). Returns its sequence number; wait for it
    /// with [`App::durable`] before answering.
    pub fn commit(&self, core: &mut Core, entry: Entry) -> Result<(u64, Applied), ApiError> {
        let at_ms = unix_ms();
        let seq = self.next_seq(core);
        let body = serde_json::to_vec(&entry).map_err(|e| ApiError::internal(e.to_string()))?;
        let kind = entry.kind();
        let tick = matches!(entry, Entry::Tick { .. });
        // Entries that change which nodes are live change the agents' desired sets.
        let assigns = matches!(
            entry,
            Entry::AgentRegister { .. }
                | Entry::NodeLost { .. }
                | Entry::NodeState { .. }
                | Entry::Topology { .. }
                | Entry::CatalogAdd { .. }
        );
        if matches!(entry, Entry::Topology { .. } | Entry::CatalogAdd { .. }) {
            // A rebuild reads the specs of live jobs back from the log: all must be on disk.
            self.log
                .wait_durable(core.seq())
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
        let applied = core
            .apply_owned(seq, at_ms, entry)
            .map_err(ApiError::from)?;
        self.log
            .append(Record {
                seq,
                at_ms,
                kind: kind.into(),
                body,
            })
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if let Some(d) = applied.pass {
            self.metrics.observe_pass(d);
        }
        if !tick {
            self.tick.notify_one();
        }
        if !applied.decisions.is_empty() || assigns {
            self.agents.changed();
        }
        Ok((seq, applied))
    }

    fn next_seq(&self, core: &Core) -> u64 {
        core.seq() + 1
    }

    /// Waits until `seq` is on disk.
    pub async fn durable(&self, seq: u64) -> Result<(), ApiError> {
        let mut rx = self.durable.clone();
        rx.wait_for(|d| *d >= seq)
            .await
            .map(|_| ())
            .map_err(|_| ApiError::unavailable("the event log writer has stopped".into()))
    }

    pub fn durable_seq(&self) -> u64 {
        self.log.durable_seq()
    }

    /// Writes what is queued and stops the log writer (a replica stepping down or stopping).
    pub fn close_log(&self) {
        self.log.close()
    }

    pub fn commit_batches(&self) -> u64 {
        self.log.batches()
    }
}

/// A started server: its address, and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Held while serving: see `lock_data_dir`.
    _lock: std::fs::File,
}

impl Running {
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.notify_one();
        self.task.await??;
        Running::close(self.app).await
    }

    /// After serving: a last snapshot, then the log writer drains and stops.
    async fn close(app: Arc<App>) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || {
            if let Err(e) = app.snapshots.at_shutdown(&app) {
                tracing::warn!("cannot write a snapshot at shutdown: {e:#}");
            }
            app.log.close();
        })
        .await?;
        Ok(())
    }
    /// Serves until SIGINT or SIGTERM.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        let stop = self.stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.notify_one();
        });
        self.task.await??;
        Running::close(self.app).await
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// A replayed core and the store handles a controller serves from.
pub struct Parts {
    pub core: Core,
    pub last: u64,
    pub stats: ReplayStats,
    /// The group-commit writer's handle (fenced by the leader's term on PostgreSQL).
    pub log: Box<dyn Store>,
    pub reader: Box<dyn Store>,
    pub snapshots: Box<dyn Store>,
}

/// Builds the shared state over a replayed core. `on_fail` hears, once, that the log writer
/// failed: nothing after its `durable_seq` was acknowledged, and nothing more will be.
pub fn assemble(
    dir: &Path,
    cfg: Config,
    p: Parts,
    on_fail: Box<dyn Fn(CommitError) + Send>,
) -> Arc<App> {
    let (tx, rx) = watch::channel(p.last);
    let log = GroupCommit::start(
        p.log,
        p.last,
        cfg.max_commit_batch,
        Box::new(move |r| match r {
            Ok(seq) => {
                tx.send_replace(seq);
            }
            Err(e) => on_fail(e),
        }),
    );
    let agents = agents::Agents::new(
        &p.core,
        Duration::from_millis(cfg.agent_lease_ms),
        Duration::from_millis(cfg.agent_lease_margin_ms),
    );
    let clock = EngineClock::new(unix_ms(), p.core.now_s());
    Arc::new(App {
        agents,
        snapshots: snapshot::Snapshots::new(
            p.snapshots,
            cfg.snapshot_every_records,
            p.stats.snapshot_seq,
        ),
        limiter: RateLimiter::new(cfg.submit_rate_per_s, cfg.submit_burst),
        disk: disk::DiskWatch::new(
            dir.to_path_buf(),
            cfg.min_free_disk_mib,
            cfg.min_free_disk_fraction,
        ),
        http: Arc::new(http::Stats::default()),
        clock,
        log_fetches: fetches::FetchLimit::new(cfg.max_log_fetches, cfg.max_log_fetches_per_agent),
        metrics: metrics::Metrics::new(),
        cfg,
        core: Mutex::new(p.core),
        log,
        durable: rx,
        reader: Mutex::new(p.reader),
        tick: Notify::new(),
        started: Instant::now(),
        replay: p.stats,
    })
}

/// Opens the data directory, replays the log, binds `cfg.listen` and starts serving.
pub async fn start(dir: &Path, cfg: Config) -> anyhow::Result<Running> {
    cfg.check()?;
    let d = DataDir(dir.to_path_buf());
    if !d.db().exists() {
        anyhow::bail!(
            "{} has no store: run `gosok server init --data-dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let lock = lock_data_dir(dir)?;
    let mut store = SqliteStore::open(&d.db())?;
    let reader = store.reopen()?;
    let snapshot_store = store.reopen()?;
    let (core, last, stats) = replay(&mut store, &cfg)?;
    tracing::info!(
        records = stats.records,
        from_snapshot = stats.snapshot_seq,
        ms = stats.elapsed.as_millis() as u64,
        "replayed the event log"
    );
    let fd_limit = http::raise_fd_limit();
    if fd_limit > 0 && (cfg.max_connections as u64).saturating_add(256) > fd_limit {
        tracing::warn!(
            fd_limit,
            max_connections = cfg.max_connections,
            "the open-file limit is close to max_connections: lower max_connections or raise the limit"
        );
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let parts = Parts {
        core,
        last,
        stats,
        log: Box::new(store),
        reader,
        snapshots: snapshot_store,
    };
    let app = assemble(
        dir,
        cfg,
        parts,
        Box::new(|e| {
            // Fail-stop: nothing after e.durable_seq was acknowledged, and a controller
            // that cannot write must not go on answering.
            eprintln!("gosok server: {e}; stopping");
            std::process::exit(75);
        }),
    );
    let stop = Arc::new(Notify::new());
    let router = api::router(app.clone());
    let ticker = tokio::spawn(tick_loop(app.clone()));
    let s = stop.clone();
    let tls = match (&app.cfg.tls_cert, &app.cfg.tls_key) {
        (Some(c), Some(k)) => Some(http::tls_acceptor(c, k)?),
        _ => None,
    };
    let limits = http::Limits::of(&app.cfg);
    let stats = app.http.clone();
    let task = tokio::spawn(async move {
        http::serve(
            listener,
            tls,
            router,
            limits,
            stats,
            async move { s.notified().await },
            Duration::from_secs(10),
        )
        .await?;
        ticker.abort();
        Ok(())
    });
    Ok(Running {
        addr,
        app,
        stop,
        task,
        _lock: lock,
    })
}

/// One controller per data directory: a second one would append to the same log with its
/// own idea of the next sequence number. The lock is the operating system's (it goes with
/// the process, however it ends).
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("gosok.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another gosok controller is serving {} (it holds {})",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Advances the clock and runs a pass: every `tick_ms` while work waits or runs, and
/// `min_tick_gap_ms` after a change.
pub(crate) async fn tick_loop(app: Arc<App>) {
    let every = Duration::from_millis(app.cfg.tick_ms);
    let gap = Duration::from_millis(app.cfg.min_tick_gap_ms);
    let idle = Duration::from_millis(app.cfg.idle_tick_ms.max(app.cfg.tick_ms));
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = app.tick.notified() => tokio::time::sleep(gap).await,
        }
        // After a change: a pass now. Otherwise, while work waits or runs, the clock still
        // moves (runtime limits, reservations) but only every `idle_tick_ms`: every tick is a
        // log record that a restart replays.
        let due = last.is_none_or(|t| t.elapsed() >= idle);
        let app2 = app.clone();
        let r = tokio::task::spawn_blocking(move || {
            agents::expire_leases(&app2);
            let mut core = app2.core();
            if !(core.dirty || (due && core.needs_tick())) {
                return Ok(false);
            }
            let now_s = app2.clock.now_s();
            let r = app2.commit(&mut core, Entry::Tick { now_s }).map(|_| true);
            // A tenant whose allocations ran out while its work ran: the action, on record.
            for (tenant, action, jobs) in core.newly_exhausted() {
                let change = crate::core::AccountChange::Exhausted {
                    tenant,
                    action,
                    jobs,
                };
                let by = "controller".to_string();
                if let Err(e) = app2.commit(&mut core, Entry::Account { change, by }) {
                    tracing::warn!("recording an exhausted allocation failed: {}", e.message);
                }
            }
            if app2.snapshots.due(core.seq()) {
                app2.snapshots.start(&app2, &core);
            }
            r
        })
        .await;
        match r {
            Ok(Ok(true)) => last = Some(Instant::now()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("scheduling tick failed: {}", e.message),
            Err(e) => tracing::warn!("scheduling tick failed: {e}"),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::from_refusal(r)
    }
}

/// A token for a tenant (or an admin token when `tenant` is None, or an agent token), with
/// its log entry.
pub fn new_token_entry(core: &Core, tenant: Option<&str>, agent: bool) -> (String, TokenEntry) {
    let id = format!("tok-{}", core.token_count() + 1);
    auth::new_token(&id, tenant, agent)
}

/// For benchmarks: appends submissions (and a tick every `per_tick` of them) for tenants
/// `tenants` round-robin until the log holds `target` records, writing through the same
/// core and log format as the server (in large transactions). Returns the log length.
pub fn fill_log(
    dir: &Path,
    cfg: &Config,
    tenants: &[String],
    spec: &gosok_model::JobSpec,
    target: u64,
    per_tick: u64,
) -> anyhow::Result<u64> {
    let d = DataDir(dir.to_path_buf());
    let mut store = SqliteStore::open(&d.db())?;
    let (mut core, mut last, stats) = replay(&mut store, cfg)?;
    anyhow::ensure!(!tenants.is_empty(), "no tenants to submit for");
    // Snapshots as the server takes them: after every `snapshot_every_records` records (no
    // shutdown snapshot: the log ends as a crash would leave it).
    let mut snapshot_seq = stats.snapshot_seq;
    let mut batch = Vec::with_capacity(10_000);
    let mut now_s = core.now_s();
    let mut k = 0u64;
    while last < target {
        let entry = if k % per_tick.max(1) == per_tick.max(1) - 1 {
            now_s += 1;
            Entry::Tick { now_s }
        } else {
            Entry::Submit {
                job: core.next_job_id(),
                tenant: tenants[(k as usize) % tenants.len()].clone(),
                spec: Box::new(spec.clone()),
                command: Vec::new(),
                env: Default::default(),
                workdir: None,
                idempotency: None,
                control: None,
                by: "bench".into(),
            }
        };
        k += 1;
        let seq = last + 1;
        let at_ms = now_s * 1000;
        let record = Record {
            seq,
            at_ms,
            kind: entry.kind().into(),
            body: serde_json::to_vec(&entry)?,
        };
        core.apply_owned(seq, at_ms, entry)
            .map_err(|e| anyhow::anyhow!("fill: {}", e.message))?;
        batch.push(record);
        last = seq;
        let every = cfg.snapshot_every_records;
        let snapshot_due = every > 0 && last >= snapshot_seq.saturating_add(every);
        if batch.len() == 10_000 || snapshot_due {
            store.append(&batch)?;
            batch.clear();
        }
        if snapshot_due {
            // Durable up to `last`: the append above returned.
            snapshot::put(&mut store, snapshot::take(&core)?)?;
            snapshot_seq = last;
        }
    }
    store.append(&batch)?;
    Ok(last)
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn the_engine_clock_moves_with_monotonic_time_only() {
        let c = EngineClock::new(10_000_500, 0);
        assert_eq!(c.after(Duration::ZERO), 10_000);
        assert_eq!(c.after(Duration::from_millis(499)), 10_000);
        assert_eq!(c.after(Duration::from_millis(500)), 10_001);
        assert_eq!(c.after(Duration::from_secs(7200)), 17_200);
        // A wall clock behind the log (stepped back while the controller was down) does not
        // take the engine back.
        let c = EngineClock::new(5_000_000, 9_000);
        assert_eq!(c.after(Duration::from_secs(1)), 9_001);
        // Nothing read after the start changes it: the tick reads this clock, not the wall.
        let now = EngineClock::new(unix_ms(), 0).now_s();
        assert!(now.abs_diff(unix_ms() / 1000) <= 1);
    }
}
