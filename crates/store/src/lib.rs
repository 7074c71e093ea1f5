//! gosok's controller store: an append-only event log plus snapshots.
//!
//! The controller's state is what its event log says. Every change is a [`Record`] with a
//! gapless sequence number; a change is acknowledged only once its record is on disk. A
//! [`GroupCommit`] writer batches the records that arrive while the previous batch is being
//! synced, so one fsync covers many changes and durability does not cost throughput.
//!
//! The log is behind the small [`Store`] trait: [`SqliteStore`] (embedded SQLite in WAL mode)
//! is the default; [`PgStore`] keeps the same log in PostgreSQL for several controller
//! replicas, of which the one holding the [`lease`] writes, fenced by its term.
//! Records and snapshots are opaque bytes here: what they mean is the controller's business.

mod group;
pub mod lease;
mod postgres;
mod sqlite;
pub mod testpg;

/// The PostgreSQL client's connection settings, parsed from a URL (to check one early).
pub use ::postgres::Config as PgConfig;
pub use group::{CommitError, GroupCommit};
pub use lease::{Lease, ReplicaRow};
pub use postgres::{IDLE_IN_TRANSACTION_MS, PgStore, session_config as pg_session_config};
pub use sqlite::{Damage, SqliteStore};

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1, 2, 3, ...: gapless, assigned by the appender.
    pub seq: u64,
    /// Wall-clock time of the change, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What kind of change it is; lets a reader skip kinds without decoding bodies.
    pub kind: String,
    pub body: Vec<u8>,
}

/// A stored snapshot: the state as of `seq` (records after it are replayed on top).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub at_ms: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error(
        "store: this controller's term {mine} is over (the lease is at term {current}): another replica leads, and this one may not write"
    )]
    Fenced { mine: u64, current: u64 },
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "store: record {got} does not follow {last}: the log must stay gapless (is another controller writing to this data directory?)"
    )]
    OutOfOrder { last: u64, got: u64 },
    #[error("store: {0}")]
    Corrupt(String),
}

/// Where the event log and snapshots live.
///
/// Appends are atomic per call (all records of a batch or none) and durable when `append`
/// returns. A store handle is used by one thread at a time; open another handle (see
/// [`Store::reopen`]) to read while a writer appends.
pub trait Store: Send {
    /// Appends a batch; `records[0].seq` must be `last_seq() + 1` and the rest follow.
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError>;
    /// The last sequence number in the log (0 when empty).
    fn last_seq(&mut self) -> Result<u64, StoreError>;
    /// Calls `f` for every record after `after`, in order. Stops at the first error of `f`.
    fn scan(
        &mut self,
        after: u64,
        f: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// At most `limit` records after `after`, in order, skipping kinds in `skip_kinds`.
    fn page(
        &mut self,
        after: u64,
        limit: usize,
        skip_kinds: &[&str],
    ) -> Result<Vec<Record>, StoreError>;
    /// One record.
    fn get(&mut self, seq: u64) -> Result<Option<Record>, StoreError>;
    /// Stores a snapshot (durably); older snapshots may be dropped.
    fn put_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError>;
    fn latest_snapshot(&mut self) -> Result<Option<Snapshot>, StoreError>;
    /// A small key-value table for the store's owner (format versions and the like).
    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Another handle on the same store, for another thread.
    fn reopen(&self) -> Result<Box<dyn Store>, StoreError>;
}
