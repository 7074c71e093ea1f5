//! Moving a highway's log between stores: `gosok server backup` (an online copy of the log
//! and the latest snapshot into a fresh SQLite store file) and `gosok server migrate` (from
//! one store to another, e.g. SQLite to PostgreSQL).
//!
//! The log is append-only, so a copy read while a controller appends is a consistent
//! prefix of it: the records up to the end seen when the copy started, and the latest
//! snapshot that they cover.

use gosok_store::Store;

/// What a copy took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub records: u64,
    /// The snapshot copied (0: none).
    pub snapshot_seq: u64,
}

/// Records written per transaction of the target.
const BATCH: usize = 5000;

/// Copies the log (up to its end as of the start), its format and the latest snapshot it
/// covers from `from` into the empty store `to`.
pub fn copy(from: &mut dyn Store, to: &mut dyn Store) -> anyhow::Result<Copied> {
    anyhow::ensure!(
        to.last_seq()? == 0,
        "the target already holds a log ({} records): copy into an empty store only",
        to.last_seq()?
    );
    let end = from.last_seq()?;
    anyhow::ensure!(end > 0, "the source holds no log");
    if let Some(f) = from.meta("log_format")? {
        to.set_meta("log_format", &f)?;
    }
    let mut batch = Vec::with_capacity(BATCH);
    let mut failed = None;
    from.scan(0, &mut |r| {
        if r.seq > end {
            return Ok(());
        }
        batch.push(r);
        if batch.len() == BATCH {
            if let Err(e) = to.append(&batch) {
                failed = Some(e);
                return Err(gosok_store::StoreError::Corrupt("the copy stopped".into()));
            }
            batch.clear();
        }
        Ok(())
    })
    .map_err(|e| match failed.take() {
        Some(w) => anyhow::anyhow!("writing the copy: {w}"),
        None => anyhow::anyhow!("reading the source: {e}"),
    })?;
    to.append(&batch)?;
    let copied = to.last_seq()?;
    anyhow::ensure!(
        copied == end,
        "copied {copied} records of {end}: the source changed under the copy"
    );
    let snapshot_seq = match from.latest_snapshot()? {
        Some(s) if s.seq <= end => {
            to.put_snapshot(&s)?;
            s.seq
        }
        _ => 0,
    };
    Ok(Copied {
        records: end,
        snapshot_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gosok_store::{Record, Snapshot, SqliteStore};

    #[test]
    fn a_copy_holds_the_log_the_format_and_the_latest_snapshot_and_refuses_a_full_target() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        a.set_meta("log_format", "9").unwrap();
        let recs: Vec<Record> = (1..=12_345)
            .map(|seq| Record {
                seq,
                at_ms: seq,
                kind: "tick".into(),
                body: vec![seq as u8],
            })
            .collect();
        a.append(&recs).unwrap();
        a.put_snapshot(&Snapshot {
            seq: 10_000,
            at_ms: 1,
            body: vec![7; 100],
        })
        .unwrap();
        let mut b = SqliteStore::open(&dir.path().join("b.db")).unwrap();
        let c = copy(&mut a, &mut b).unwrap();
        assert_eq!(
            c,
            Copied {
                records: 12_345,
                snapshot_seq: 10_000
            }
        );
        assert_eq!(b.get(12_345).unwrap(), Some(recs[12_344].clone()));
        assert_eq!(b.meta("log_format").unwrap().as_deref(), Some("9"));
        assert_eq!(b.latest_snapshot().unwrap().unwrap().body, vec![7; 100]);
        let e = copy(&mut a, &mut b).unwrap_err().to_string();
        assert!(e.contains("already holds a log"), "{e}");
        let mut empty = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        let mut d = SqliteStore::open(&dir.path().join("d.db")).unwrap();
        assert!(
            copy(&mut empty, &mut d)
                .unwrap_err()
                .to_string()
                .contains("no log")
        );
    }
}
