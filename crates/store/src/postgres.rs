//! The replicated store: the same append-only log and snapshots in PostgreSQL, shared by
//! several controller replicas of which one (the leader, see [`crate::lease`]) writes.
//!
//! Durability is PostgreSQL's: a transaction is on disk (its WAL fsynced, and on the
//! synchronous standbys the operator configured) when `COMMIT` returns, so an append
//! returns only once its records are durable, as with SQLite.
//!
//! Fencing: a handle made with [`PgStore::fenced`] carries the leader's term, and every
//! append checks it against the lease row in the same transaction, holding a share lock on
//! that row until commit. An election (which updates the row) therefore waits for appends in
//! flight, and an append after it sees the new term and is refused: a deposed leader that
//! wakes up cannot write a record.
//!
//! The client is the synchronous `postgres` crate, which drives its connection on a runtime
//! of its own; such a runtime cannot be entered from inside another (the controller's HTTP
//! handlers run on tokio). Each handle therefore owns a thread that holds the connection and
//! runs the calls handed to it, whatever thread they come from.

use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use postgres::{Client, NoTls};

use crate::sqlite::{record_crc, snapshot_crc};
use crate::{Record, Snapshot, Store, StoreError};

/// Tables of the log, snapshots, meta and the leader's lease. Created under an advisory
/// lock: replicas that start together would otherwise race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gosok_events (
    seq   BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind  TEXT NOT NULL,
    body  BYTEA NOT NULL,
    crc   BIGINT NOT NULL,
    term  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gosok_snapshots (
    seq   BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    body  BYTEA NOT NULL,
    crc   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gosok_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS gosok_leader (
    id         INT PRIMARY KEY CHECK (id = 1),
    term       BIGINT NOT NULL,
    holder     TEXT NOT NULL,
    url        TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO gosok_leader VALUES (1, 0, '', '', 'epoch') ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS gosok_replicas (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    role        TEXT NOT NULL,
    applied_seq BIGINT NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL
);
";

/// The advisory lock key that serialises schema creation ("gosok" in ASCII).
const SCHEMA_LOCK: i64 = 0x0067_6f73_6f6b;

/// Snapshots kept, the latest included.
const KEEP_SNAPSHOTS: i64 = 2;

type Call = Box<dyn FnOnce(&mut Client) + Send>;

/// A connection on a thread of its own; see the module comment.
struct Conn {
    tx: Option<Sender<Call>>,
    thread: Option<JoinHandle<()>>,
}

impl Conn {
    fn open(url: &str) -> Result<Conn, StoreError> {
        let (tx, rx) = channel::<Call>();
        let (ready_tx, ready_rx) = channel();
        let url = url.to_string();
        let thread = std::thread::Builder::new()
            .name("gosok-postgres".into())
            .spawn(move || {
                let mut client = match connect(&url) {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for call in rx {
                    call(&mut client);
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Conn {
                tx: Some(tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(StoreError::Postgres(e)),
            Err(_) => Err(StoreError::Corrupt(
                "the PostgreSQL connection thread stopped".into(),
            )),
        }
    }

    /// Runs `f` on the connection's thread and waits for its result.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = channel();
        let call: Call = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.tx
            .as_ref()
            .and_then(|t| t.send(call).ok())
            .ok_or_else(|| StoreError::Corrupt("the PostgreSQL connection is closed".into()))?;
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "the PostgreSQL connection thread stopped".into(),
            ))
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The thread ends once its queue is empty. It is not waited for: a call blocked on a
        // PostgreSQL that cannot be reached must not hold up a controller stepping down.
        self.tx.take();
        self.thread.take();
    }
}

/// Connects with a bounded wait and TCP keepalives, so that a PostgreSQL that went away is
/// noticed instead of waited on for the kernel's default of hours.
fn connect(url: &str) -> Result<Client, postgres::Error> {
    session_config(url)?.connect(NoTls)
}

/// The connection settings of every session gosok opens on `url`.
pub fn session_config(url: &str) -> Result<postgres::Config, postgres::Error> {
    let mut cfg: postgres::Config = url.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(std::time::Duration::from_secs(5));
    }
    cfg.keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5))
        .keepalives_interval(std::time::Duration::from_secs(1))
        .keepalives_retries(3);
    // A replica frozen (or cut off) inside a transaction keeps its locks until PostgreSQL
    // ends the session: an append's share lock on the lease row would block every election,
    // and `open`'s schema lock every new connection, for as long as the freeze lasts. Ending
    // sessions idle in a transaction bounds that wait; the transaction rolls back, so nothing
    // unacknowledged is kept. An operator's own `options` in the URL are kept and may set it.
    let ours = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
    let options = match cfg.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    cfg.options(&options);
    Ok(cfg)
}

/// How long PostgreSQL lets a session of gosok's sit inside a transaction waiting for the
/// client before ending it. gosok's transactions send their statements back to back, so only a
/// client that has stopped (frozen, partitioned) reaches it; an election waits at most this long
/// for such a client's locks, on top of the lease.
pub const IDLE_IN_TRANSACTION_MS: u64 = 1_500;

pub struct PgStore {
    url: String,
    conn: Conn,
    /// The term every append must still hold (None: unfenced, for `init`, tools and
    /// migration, which run while no controller serves).
    term: Option<u64>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A record from a row of (seq, at_ms, kind, body, crc), its checksum checked.
fn record(row: &postgres::Row) -> Result<Record, StoreError> {
    let rec = Record {
        seq: row.try_get::<_, i64>(0)? as u64,
        at_ms: row.try_get::<_, i64>(1)? as u64,
        kind: row.try_get(2)?,
        body: row.try_get(3)?,
    };
    let stored: i64 = row.try_get(4)?;
    let computed = record_crc(&rec);
    if stored != computed as i64 {
        return Err(StoreError::Corrupt(format!(
            "log record {} fails its checksum (stored {stored:08x}, computed {computed:08x}): the PostgreSQL log is damaged",
            rec.seq
        )));
    }
    Ok(rec)
}

const SELECT: &str = "SELECT seq, at_ms, kind, body, crc FROM gosok_events";

/// Rows read per round trip by `scan`.
const SCAN_PAGE: i64 = 4096;

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creating the tables if need be.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let conn = Conn::open(url)?;
        conn.call(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            tx.batch_execute(SCHEMA)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(PgStore {
            url: url.to_string(),
            conn,
            term: None,
        })
    }

    /// The same store, its appends fenced by `term`: each is refused, in its own
    /// transaction, once the lease row holds another term.
    pub fn fenced(url: &str, term: u64) -> Result<PgStore, StoreError> {
        let mut s = PgStore::open(url)?;
        s.term = Some(term);
        Ok(s)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its password, for messages and status. Query parameters (which may
    /// carry `password=`, `sslpassword=` and the like) are left out altogether.
    pub fn display_url(url: &str) -> String {
        let url = match url.split_once('?') {
            Some((base, _)) => return format!("{}?…", Self::display_url(base)),
            None => url,
        };
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let auth = &url[s + 3..at];
                match auth.find(':') {
                    Some(colon) => format!("{}{}:***{}", &url[..s + 3], &auth[..colon], &url[at..]),
                    None => url.to_string(),
                }
            }
            _ => url.to_string(),
        }
    }

    /// Runs `f` on this handle's connection (the lease module's queries).
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.conn.call(f)
    }

    /// Deletes every record, snapshot and meta value and resets the lease: for tests and for
    /// `migrate`, which refuses a non-empty target unless told.
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.conn.call(|c| {
            c.batch_execute(
                "TRUNCATE gosok_events, gosok_snapshots, gosok_meta, gosok_replicas;
                 UPDATE gosok_leader SET holder = '', url = '', expires_at = 'epoch';",
            )?;
            Ok(())
        })
    }
}

impl Store for PgStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let term = self.term;
        let mut seqs = Vec::with_capacity(records.len());
        let mut ats = Vec::with_capacity(records.len());
        let mut kinds = Vec::with_capacity(records.len());
        let mut bodies = Vec::with_capacity(records.len());
        let mut crcs = Vec::with_capacity(records.len());
        for r in records {
            seqs.push(to_i64(r.seq));
            ats.push(to_i64(r.at_ms));
            kinds.push(r.kind.clone());
            bodies.push(r.body.clone());
            crcs.push(record_crc(r) as i64);
        }
        let first = seqs[0];
        if let Some(pair) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(StoreError::OutOfOrder {
                last: pair[0] as u64,
                got: pair[1] as u64,
            });
        }
        let fence = term.map(to_i64);
        self.conn.call(move |c| {
            // One statement, so one round trip and one commit per batch. The term is read
            // FOR SHARE: an election (which updates that row) waits for this statement, and
            // this one, if it comes after an election, reads the new term and inserts nothing.
            // The batch goes in only right after the log's last record.
            let inserted = c.execute(
                "INSERT INTO gosok_events (seq, at_ms, kind, body, crc, term)
                 SELECT s, a, k, b, c, COALESCE($6::bigint, 0)
                   FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[]) AS t(s, a, k, b, c)
                  WHERE ($6::bigint IS NULL
                         OR (SELECT term FROM gosok_leader WHERE id = 1 FOR SHARE) = $6::bigint)
                    AND (SELECT COALESCE(MAX(seq), 0) FROM gosok_events) = $7::bigint - 1",
                &[&seqs, &ats, &kinds, &bodies, &crcs, &fence, &first],
            )?;
            if inserted == seqs.len() as u64 {
                return Ok(());
            }
            // Nothing went in (the statement is all or nothing): say why.
            let row = c.query_one(
                "SELECT (SELECT term FROM gosok_leader WHERE id = 1),
                        (SELECT COALESCE(MAX(seq), 0) FROM gosok_events)",
                &[],
            )?;
            let (current, last) = (row.try_get::<_, i64>(0)? as u64, row.try_get::<_, i64>(1)?);
            if let Some(mine) = term
                && current != mine
            {
                return Err(StoreError::Fenced { mine, current });
            }
            Err(StoreError::OutOfOrder {
                last: last as u64,
                got: first as u64,
            })
        })
    }

    fn last_seq(&mut self) -> Result<u64, StoreError> {
        self.conn.call(|c| {
            let l: i64 = c
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM gosok_events", &[])?
                .try_get(0)?;
            Ok(l as u64)
        })
    }

    fn scan(
        &mut self,
        after: u64,
        f: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Pages of rows, each its own query: the callback runs on the caller's thread, and
        // a page at a time keeps memory flat however long the log is.
        let mut next = after + 1;
        loop {
            let from = to_i64(next - 1);
            let page = self.conn.call(move |c| {
                let rows = c.query(
                    &format!("{SELECT} WHERE seq > $1 ORDER BY seq LIMIT $2"),
                    &[&from, &SCAN_PAGE],
                )?;
                rows.iter().map(record).collect::<Result<Vec<_>, _>>()
            })?;
            let n = page.len();
            for r in page {
                if r.seq != next {
                    return Err(StoreError::Corrupt(format!(
                        "the log has a gap: record {next} is missing (the next one is {})",
                        r.seq
                    )));
                }
                next += 1;
                f(r)?;
            }
            if (n as i64) < SCAN_PAGE {
                return Ok(());
            }
        }
    }

    fn page(
        &mut self,
        after: u64,
        limit: usize,
        skip_kinds: &[&str],
    ) -> Result<Vec<Record>, StoreError> {
        let after = to_i64(after);
        let limit = limit.min(1 << 20) as i64;
        let skip: Vec<String> = skip_kinds.iter().map(|s| s.to_string()).collect();
        self.conn.call(move |c| {
            let rows = c.query(
                &format!("{SELECT} WHERE seq > $1 AND NOT (kind = ANY($2)) ORDER BY seq LIMIT $3"),
                &[&after, &skip, &limit],
            )?;
            rows.iter().map(record).collect()
        })
    }

    fn get(&mut self, seq: u64) -> Result<Option<Record>, StoreError> {
        let seq = to_i64(seq);
        self.conn.call(move |c| {
            match c.query_opt(&format!("{SELECT} WHERE seq = $1"), &[&seq])? {
                Some(row) => Ok(Some(record(&row)?)),
                None => Ok(None),
            }
        })
    }

    fn put_snapshot(&mut self, s: &Snapshot) -> Result<(), StoreError> {
        let (seq, at_ms, crc) = (to_i64(s.seq), to_i64(s.at_ms), snapshot_crc(s) as i64);
        let body = s.body.clone();
        self.conn.call(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO gosok_snapshots (seq, at_ms, body, crc) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seq) DO UPDATE SET at_ms = $2, body = $3, crc = $4",
                &[&seq, &at_ms, &body, &crc],
            )?;
            tx.execute(
                "DELETE FROM gosok_snapshots WHERE seq NOT IN
                   (SELECT seq FROM gosok_snapshots ORDER BY seq DESC LIMIT $1)",
                &[&KEEP_SNAPSHOTS],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn latest_snapshot(&mut self) -> Result<Option<Snapshot>, StoreError> {
        self.conn.call(|c| {
            let Some(row) = c.query_opt(
                "SELECT seq, at_ms, body, crc FROM gosok_snapshots ORDER BY seq DESC LIMIT 1",
                &[],
            )?
            else {
                return Ok(None);
            };
            let snap = Snapshot {
                seq: row.try_get::<_, i64>(0)? as u64,
                at_ms: row.try_get::<_, i64>(1)? as u64,
                body: row.try_get(2)?,
            };
            let stored: i64 = row.try_get(3)?;
            let computed = snapshot_crc(&snap);
            if stored != computed as i64 {
                return Err(StoreError::Corrupt(format!(
                    "the snapshot of record {} fails its checksum (stored {stored:08x}, computed {computed:08x}): the PostgreSQL snapshot table is damaged",
                    snap.seq
                )));
            }
            Ok(Some(snap))
        })
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.conn.call(move |c| {
            Ok(
                c.query_opt("SELECT value FROM gosok_meta WHERE key = $1", &[&key])?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.conn.call(move |c| {
            c.execute(
                "INSERT INTO gosok_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = $2",
                &[&key, &value],
            )?;
            Ok(())
        })
    }

    fn reopen(&self) -> Result<Box<dyn Store>, StoreError> {
        // Readers need no fence: only appends do.
        Ok(Box::new(PgStore::open(&self.url)?))
    }
}

#[cfg(test)]
mod tests {
    use super::PgStore;

    #[test]
    fn a_displayed_url_never_carries_a_password() {
        for (url, shown) in [
            (
                "postgres://gosok:S3cret@db:5432/gosok",
                "postgres://gosok:***@db:5432/gosok",
            ),
            ("postgres://gosok@db/gosok", "postgres://gosok@db/gosok"),
            (
                "postgres://gosok@db/gosok?password=S3cret",
                "postgres://gosok@db/gosok?…",
            ),
            (
                "postgres://db/gosok?user=g&password=S3cret",
                "postgres://db/gosok?…",
            ),
        ] {
            assert_eq!(PgStore::display_url(url), shown);
            assert!(!PgStore::display_url(url).contains("S3cret"));
        }
    }
}
