//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so that a
//! committed transaction has been fsynced to the write-ahead log before `COMMIT` returns.
//!
//! Snapshots live in a second SQLite file beside it (`NAME.snapshots.db`): a snapshot of a
//! large highway is a hundred megabytes, and written into the log's file it would hold the
//! log's write lock (stalling appends, so acknowledgements) for as long as it takes, then
//! pass through the log's write-ahead log a second time at checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Record, Snapshot, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    body  BLOB NOT NULL,
    crc   INTEGER
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const SNAPSHOT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    seq   INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    body  BLOB NOT NULL,
    crc   INTEGER
);
";

/// Snapshots kept, the latest included (older ones are deleted when a new one is stored).
const KEEP_SNAPSHOTS: i64 = 2;

/// Adds the `crc` column to a table made before checksums (its rows keep NULL: they were
/// written unchecked, and are read so).
fn add_crc_column(conn: &Connection, table: &str) -> Result<(), StoreError> {
    let has: bool = conn
        .prepare(&format!("PRAGMA table_info({table})"))?
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .any(|c| c == "crc");
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN crc INTEGER"))?;
    }
    Ok(())
}

/// CRC-32C of a record: its sequence number, time, kind and body, so that a record moved,
/// retimed or relabelled fails too.
pub fn record_crc(r: &Record) -> u32 {
    let mut c = crc32c::crc32c(&r.seq.to_le_bytes());
    c = crc32c::crc32c_append(c, &r.at_ms.to_le_bytes());
    c = crc32c::crc32c_append(c, &(r.kind.len() as u64).to_le_bytes());
    c = crc32c::crc32c_append(c, r.kind.as_bytes());
    crc32c::crc32c_append(c, &r.body)
}

/// CRC-32C of a snapshot: its sequence number, time and body.
pub fn snapshot_crc(s: &Snapshot) -> u32 {
    let mut c = crc32c::crc32c(&s.seq.to_le_bytes());
    c = crc32c::crc32c_append(c, &s.at_ms.to_le_bytes());
    crc32c::crc32c_append(c, &s.body)
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    last: Option<u64>,
    /// The snapshot file, opened when first used.
    snapshots: Option<Connection>,
}

impl SqliteStore {
    /// Opens (creating if need be) the store file at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL: readers do not block the writer. FULL: COMMIT syncs the WAL, so a committed
        // append survives a crash of the process or the machine.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "{} cannot be put in WAL mode (it says {mode:?})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(SCHEMA)?;
        add_crc_column(&conn, "events")?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn,
            last: None,
            snapshots: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot file beside the log: `gosok.db` keeps its snapshots in
    /// `gosok.snapshots.db`.
    pub fn snapshot_path(&self) -> PathBuf {
        let stem = self.path.file_stem().unwrap_or_default().to_string_lossy();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}.snapshots.{}", ext.to_string_lossy()),
            None => format!("{stem}.snapshots"),
        };
        self.path.with_file_name(name)
    }

    fn snapshots(&mut self) -> Result<&mut Connection, StoreError> {
        if self.snapshots.is_none() {
            let conn = Connection::open(self.snapshot_path())?;
            conn.busy_timeout(Duration::from_secs(30))?;
            // A rollback journal, not WAL: a snapshot's pages are written once, not once
            // to the WAL and again at checkpoint. FULL: a stored snapshot survives a crash.
            let _: String = conn.query_row("PRAGMA journal_mode = TRUNCATE", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA synchronous = FULL;")?;
            conn.execute_batch(SNAPSHOT_SCHEMA)?;
            add_crc_column(&conn, "snapshots")?;
            self.snapshots = Some(conn);
        }
        Ok(self.snapshots.as_mut().expect("opened above"))
    }
}

/// A record read back from a row of (seq, at_ms, kind, body, crc), its checksum checked.
fn record(r: &rusqlite::Row<'_>) -> Result<Record, StoreError> {
    let rec = Record {
        seq: r.get::<_, i64>(0)? as u64,
        at_ms: r.get::<_, i64>(1)? as u64,
        kind: r.get(2)?,
        body: r.get(3)?,
    };
    let stored: Option<i64> = r.get(4)?;
    if let Some(stored) = stored {
        let computed = record_crc(&rec);
        if stored as u32 != computed || stored >> 32 != 0 {
            return Err(StoreError::Corrupt(format!(
                "log record {} fails its checksum (stored {stored:08x}, computed {computed:08x}): the log file is damaged",
                rec.seq
            )));
        }
    }
    Ok(rec)
}

const SELECT: &str = "SELECT seq, at_ms, kind, body, crc FROM events";

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The first thing wrong with a log: the sequence number from which it cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first record missing or failing its checksum; every record from here on is
    /// suspect.
    pub from: u64,
    pub what: String,
}

/// Recovery: explicit, operator-chosen repairs of a damaged store (`gosok server recover`).
impl SqliteStore {
    /// Reads every record and returns the first gap or checksum failure, if any.
    pub fn damage(&mut self) -> Result<Option<Damage>, StoreError> {
        let mut st = self.conn.prepare(&format!("{SELECT} ORDER BY seq"))?;
        let mut rows = st.query([])?;
        let mut next = 1u64;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            if seq != next {
                return Ok(Some(Damage {
                    from: next,
                    what: format!("record {next} is missing (the next one is {seq})"),
                }));
            }
            if let Err(e) = record(row) {
                return Ok(Some(Damage {
                    from: seq,
                    what: e.to_string(),
                }));
            }
            next += 1;
        }
        Ok(None)
    }

    /// Deletes record `from` and every record after it.
    pub fn truncate_from(&mut self, from: u64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM events WHERE seq >= ?1", params![to_i64(from)])?;
        self.last = None;
        Ok(n as u64)
    }

    /// Every stored snapshot: its sequence number and whether its checksum holds.
    pub fn snapshot_list(&mut self) -> Result<Vec<(u64, bool)>, StoreError> {
        let mut out = Vec::new();
        let conn = self.snapshots()?;
        let mut st = conn.prepare("SELECT seq, at_ms, body, crc FROM snapshots ORDER BY seq")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let snap = Snapshot {
                seq: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                body: r.get(2)?,
            };
            let ok = match r.get::<_, Option<i64>>(3)? {
                None => true,
                Some(c) => c == snapshot_crc(&snap) as i64,
            };
            out.push((snap.seq, ok));
        }
        Ok(out)
    }

    pub fn delete_snapshot(&mut self, seq: u64) -> Result<(), StoreError> {
        self.snapshots()?
            .execute("DELETE FROM snapshots WHERE seq = ?1", params![to_i64(seq)])?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut last = self.last_seq()?;
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO events (seq, at_ms, kind, body, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in records {
                if r.seq != last + 1 {
                    return Err(StoreError::OutOfOrder { last, got: r.seq });
                }
                st.execute(params![
                    to_i64(r.seq),
                    to_i64(r.at_ms),
                    r.kind,
                    r.body,
                    record_crc(r) as i64
                ])?;
                last = r.seq;
            }
        }
        tx.commit()?;
        self.last = Some(last);
        Ok(())
    }

    fn last_seq(&mut self) -> Result<u64, StoreError> {
        if let Some(l) = self.last {
            return Ok(l);
        }
        let l: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        // Only the writer caches it: a reader's view moves on as the writer appends.
        Ok(l as u64)
    }

    fn scan(
        &mut self,
        after: u64,
        f: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq"))?;
            let mut rows = st.query(params![to_i64(after)])?;
            let mut next = after + 1;
            while let Some(row) = rows.next()? {
                let r = record(row)?;
                if r.seq != next {
                    return Err(StoreError::Corrupt(format!(
                        "the log has a gap: record {next} is missing (the next one is {})",
                        r.seq
                    )));
                }
                next += 1;
                f(r)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn page(
        &mut self,
        after: u64,
        limit: usize,
        skip_kinds: &[&str],
    ) -> Result<Vec<Record>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq"))?;
        let mut rows = st.query(params![to_i64(after)])?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(row) = rows.next()?
        {
            let kind: String = row.get(2)?;
            if skip_kinds.contains(&kind.as_str()) {
                continue;
            }
            out.push(record(row)?);
        }
        Ok(out)
    }

    fn get(&mut self, seq: u64) -> Result<Option<Record>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{SELECT} WHERE seq = ?1"))?;
        let mut rows = st.query(params![to_i64(seq)])?;
        match rows.next()? {
            Some(row) => Ok(Some(record(row)?)),
            None => Ok(None),
        }
    }

    fn put_snapshot(&mut self, s: &Snapshot) -> Result<(), StoreError> {
        let tx = self.snapshots()?.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, at_ms, body, crc) VALUES (?1, ?2, ?3, ?4)",
            params![
                to_i64(s.seq),
                to_i64(s.at_ms),
                s.body,
                snapshot_crc(s) as i64
            ],
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE seq NOT IN
               (SELECT seq FROM snapshots ORDER BY seq DESC LIMIT ?1)",
            params![KEEP_SNAPSHOTS],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_snapshot(&mut self) -> Result<Option<Snapshot>, StoreError> {
        let found = self
            .snapshots()?
            .query_row(
                "SELECT seq, at_ms, body, crc FROM snapshots ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        Snapshot {
                            seq: r.get::<_, i64>(0)? as u64,
                            at_ms: r.get::<_, i64>(1)? as u64,
                            body: r.get(2)?,
                        },
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((snap, stored)) = found else {
            return Ok(None);
        };
        if let Some(stored) = stored {
            let computed = snapshot_crc(&snap);
            if stored as u32 != computed || stored >> 32 != 0 {
                return Err(StoreError::Corrupt(format!(
                    "the snapshot of record {} fails its checksum (stored {stored:08x}, computed {computed:08x}): {} is damaged",
                    snap.seq,
                    self.snapshot_path().display()
                )));
            }
        }
        Ok(Some(snap))
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    fn reopen(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            at_ms: 1000 + seq,
            kind: ["tick", "submit"][(seq % 2) as usize].into(),
            body: format!("body {seq}").into_bytes(),
        }
    }

    #[test]
    fn appends_read_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gosok.db");
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.last_seq().unwrap(), 0);
        s.append(&(1..=5).map(rec).collect::<Vec<_>>()).unwrap();
        s.append(&[rec(6)]).unwrap();
        drop(s);
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.last_seq().unwrap(), 6);
        let mut seen = Vec::new();
        s.scan(2, &mut |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (3..=6).map(rec).collect::<Vec<_>>());
        assert_eq!(s.get(4).unwrap(), Some(rec(4)));
        assert_eq!(s.get(7).unwrap(), None);
        let page = s.page(0, 2, &["tick"]).unwrap();
        assert_eq!(page, vec![rec(1), rec(3)]);
    }

    #[test]
    fn a_gap_or_a_repeat_is_refused_and_nothing_of_the_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("gosok.db")).unwrap();
        s.append(&[rec(1)]).unwrap();
        let e = s.append(&[rec(2), rec(4)]).unwrap_err();
        assert!(
            matches!(e, StoreError::OutOfOrder { last: 2, got: 4 }),
            "{e}"
        );
        let mut fresh = s.reopen().unwrap();
        assert_eq!(
            fresh.last_seq().unwrap(),
            1,
            "the failed batch left nothing"
        );
        s.last = None;
        assert!(s.append(&[rec(1)]).is_err());
        s.last = None;
        s.append(&[rec(2)]).unwrap();
    }

    #[test]
    fn a_flipped_bit_or_a_missing_record_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("gosok.db")).unwrap();
        s.append(&(1..=6).map(rec).collect::<Vec<_>>()).unwrap();
        // One bit of record 4's body flipped ("body 4" -> "bodx 4").
        s.conn
            .execute("UPDATE events SET body = X'626f64782034' WHERE seq = 4", [])
            .unwrap();
        let scan = |s: &mut SqliteStore, after| {
            let mut n = 0;
            s.scan(after, &mut |_| {
                n += 1;
                Ok(())
            })
            .map(|()| n)
        };
        let e = scan(&mut s, 0).unwrap_err().to_string();
        assert!(e.contains("log record 4 fails its checksum"), "{e}");
        assert!(s.get(4).is_err() && s.get(3).unwrap() == Some(rec(3)));
        assert!(s.page(0, 10, &[]).is_err());
        // A record moved to another sequence number fails too.
        s.conn
            .execute("DELETE FROM events WHERE seq = 4", [])
            .unwrap();
        let e = scan(&mut s, 0).unwrap_err().to_string();
        assert!(e.contains("gap: record 4 is missing"), "{e}");
        assert_eq!(scan(&mut s, 4).unwrap(), 2);
        s.conn
            .execute("UPDATE events SET seq = 4 WHERE seq = 5", [])
            .unwrap();
        let e = scan(&mut s, 3).unwrap_err().to_string();
        assert!(e.contains("record 4 fails its checksum"), "{e}");
        // Rows written before checksums (NULL) are read unchecked.
        s.conn
            .execute("UPDATE events SET crc = NULL, seq = 5 WHERE seq = 4", [])
            .unwrap();
        s.conn
            .execute(
                "INSERT INTO events (seq, at_ms, kind, body) VALUES (4, 0, 'x', X'00')",
                [],
            )
            .unwrap();
        assert_eq!(scan(&mut s, 0).unwrap(), 6);
    }

    #[test]
    fn recovery_finds_the_first_damage_and_truncates_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("gosok.db")).unwrap();
        s.append(&(1..=6).map(rec).collect::<Vec<_>>()).unwrap();
        assert_eq!(s.damage().unwrap(), None);
        s.conn
            .execute("UPDATE events SET at_ms = 7 WHERE seq = 5", [])
            .unwrap();
        s.conn
            .execute("DELETE FROM events WHERE seq = 3", [])
            .unwrap();
        let d = s.damage().unwrap().unwrap();
        assert_eq!(d.from, 3, "{d:?}");
        assert!(d.what.contains("record 3 is missing"), "{d:?}");
        assert_eq!(s.truncate_from(3).unwrap(), 3);
        assert_eq!((s.damage().unwrap(), s.last_seq().unwrap()), (None, 2));
        s.append(&[rec(3)]).unwrap();
        for seq in [2, 3] {
            s.put_snapshot(&Snapshot {
                seq,
                at_ms: 0,
                body: vec![1; 10],
            })
            .unwrap();
        }
        s.snapshots()
            .unwrap()
            .execute("UPDATE snapshots SET body = X'00' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(s.snapshot_list().unwrap(), vec![(2, true), (3, false)]);
        s.delete_snapshot(3).unwrap();
        assert_eq!(s.latest_snapshot().unwrap().unwrap().seq, 2);
    }

    #[test]
    fn a_damaged_snapshot_is_detected_and_an_old_store_gains_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gosok.db");
        {
            // A store made before checksums.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL);
                 INSERT INTO events VALUES (1, 1, 'init', X'01');",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        s.append(&[rec(2)]).unwrap();
        let mut n = 0;
        s.scan(0, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        let snap = Snapshot {
            seq: 2,
            at_ms: 5,
            body: vec![7; 1000],
        };
        s.put_snapshot(&snap).unwrap();
        assert_eq!(s.latest_snapshot().unwrap(), Some(snap));
        s.snapshots()
            .unwrap()
            .execute("UPDATE snapshots SET body = X'0707' WHERE seq = 2", [])
            .unwrap();
        let e = s.latest_snapshot().unwrap_err().to_string();
        assert!(e.contains("snapshot of record 2 fails its checksum"), "{e}");
    }

    #[test]
    fn snapshots_keep_the_latest_few() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("gosok.db")).unwrap();
        assert_eq!(s.latest_snapshot().unwrap(), None);
        for seq in [10, 20, 30] {
            s.put_snapshot(&Snapshot {
                seq,
                at_ms: seq,
                body: vec![seq as u8],
            })
            .unwrap();
        }
        assert_eq!(s.latest_snapshot().unwrap().unwrap().seq, 30);
        let n: i64 = s
            .snapshots()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, KEEP_SNAPSHOTS);
        assert_eq!(s.snapshot_path(), dir.path().join("gosok.snapshots.db"));
        // Another handle (the server writes snapshots with one of its own) sees them.
        assert_eq!(
            s.reopen().unwrap().latest_snapshot().unwrap().unwrap().seq,
            30
        );
        s.set_meta("format", "1").unwrap();
        assert_eq!(s.meta("format").unwrap().as_deref(), Some("1"));
        assert_eq!(s.meta("nope").unwrap(), None);
    }
}
