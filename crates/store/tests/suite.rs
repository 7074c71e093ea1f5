//! One suite, run against both stores: what the controller relies on from any store.
//! The PostgreSQL half starts a throwaway cluster (see `gosok_store::testpg`); each case
//! gets a fresh database of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gosok_store::testpg::Cluster;
use gosok_store::{GroupCommit, PgStore, Record, Snapshot, SqliteStore, Store, StoreError};

fn rec(seq: u64) -> Record {
    Record {
        seq,
        at_ms: 1000 + seq,
        kind: ["tick", "submit"][(seq % 2) as usize].into(),
        body: format!("body {seq}").into_bytes(),
    }
}

fn scan_all(s: &mut dyn Store, after: u64) -> Result<Vec<Record>, StoreError> {
    let mut seen = Vec::new();
    s.scan(after, &mut |r| {
        seen.push(r);
        Ok(())
    })?;
    Ok(seen)
}

/// Opens a fresh, empty store; `reopen` of what it returns opens the same store.
type Fresh<'a> = &'a mut dyn FnMut() -> Box<dyn Store>;

/// One case of the suite, named.
type Case = (&'static str, fn(Fresh));

fn appends_read_back_in_order(fresh: Fresh) {
    let mut s = fresh();
    assert_eq!(s.last_seq().unwrap(), 0);
    s.append(&(1..=5).map(rec).collect::<Vec<_>>()).unwrap();
    s.append(&[rec(6)]).unwrap();
    s.append(&[]).unwrap();
    let mut other = s.reopen().unwrap();
    drop(s);
    assert_eq!(other.last_seq().unwrap(), 6);
    assert_eq!(
        scan_all(other.as_mut(), 2).unwrap(),
        (3..=6).map(rec).collect::<Vec<_>>()
    );
    assert_eq!(other.get(4).unwrap(), Some(rec(4)));
    assert_eq!(other.get(7).unwrap(), None);
    assert_eq!(other.page(0, 2, &["tick"]).unwrap(), vec![rec(1), rec(3)]);
    assert_eq!(other.page(4, 10, &[]).unwrap(), vec![rec(5), rec(6)]);
}

fn a_gap_or_a_repeat_is_refused_and_the_batch_leaves_nothing(fresh: Fresh) {
    let mut s = fresh();
    s.append(&[rec(1)]).unwrap();
    let e = s.append(&[rec(2), rec(4)]).unwrap_err();
    assert!(matches!(e, StoreError::OutOfOrder { got: 4, .. }), "{e}");
    let mut fresh_handle = s.reopen().unwrap();
    assert_eq!(
        fresh_handle.last_seq().unwrap(),
        1,
        "the failed batch left nothing"
    );
    // A repeat from a second handle (a second writer) is refused too.
    assert!(fresh_handle.append(&[rec(1)]).is_err());
    fresh_handle.append(&[rec(2)]).unwrap();
    assert_eq!(scan_all(s.as_mut(), 0).unwrap(), vec![rec(1), rec(2)]);
}

fn a_long_log_scans_whole(fresh: Fresh) {
    // Longer than one page of the PostgreSQL scan.
    let mut s = fresh();
    let n = 10_000;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(3000) {
        s.append(&chunk.iter().map(|&q| rec(q)).collect::<Vec<_>>())
            .unwrap();
    }
    let mut next = 1;
    s.scan(0, &mut |r| {
        assert_eq!(r, rec(next));
        next += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(next, n + 1);
    // The callback's error stops the scan and comes back.
    let mut k = 0;
    let e = s
        .scan(0, &mut |_| {
            k += 1;
            if k == 5 {
                Err(StoreError::Corrupt("enough".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(e.to_string().contains("enough") && k == 5, "{e}");
}

fn snapshots_keep_the_latest_and_meta_holds(fresh: Fresh) {
    let mut s = fresh();
    assert_eq!(s.latest_snapshot().unwrap(), None);
    for seq in [10, 30, 20] {
        s.put_snapshot(&Snapshot {
            seq,
            at_ms: seq,
            body: vec![seq as u8; 100_000],
        })
        .unwrap();
    }
    let latest = s.reopen().unwrap().latest_snapshot().unwrap().unwrap();
    assert_eq!(
        (latest.seq, latest.at_ms, latest.body.len()),
        (30, 30, 100_000)
    );
    assert_eq!(s.meta("log_format").unwrap(), None);
    s.set_meta("log_format", "7").unwrap();
    s.set_meta("log_format", "8").unwrap();
    assert_eq!(
        s.reopen().unwrap().meta("log_format").unwrap().as_deref(),
        Some("8")
    );
}

fn group_commit_batches_and_acknowledges_only_what_is_durable(fresh: Fresh) {
    let s = fresh();
    let mut reader = s.reopen().unwrap();
    let commits = Arc::new(AtomicU64::new(0));
    let c = commits.clone();
    let log = Arc::new(GroupCommit::start(
        s,
        0,
        512,
        Box::new(move |r| {
            c.store(r.unwrap(), Ordering::SeqCst);
        }),
    ));
    let n = 4000u64;
    // One thread hands records over in order (as the controller does under its core lock);
    // eight wait for theirs to be durable and check the store has it.
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let (log, rx) = (log.clone(), rx.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let seq = match rx.lock().unwrap().recv() {
                        Ok(s) => s,
                        Err(_) => return n,
                    };
                    log.wait_durable(seq).unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    for seq in 1..=n {
        log.append(rec(seq)).unwrap();
        tx.send(seq).unwrap();
    }
    drop(tx);
    let acked: u64 = waiters.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(acked, n);
    assert!(log.durable_seq() >= n);
    assert!(
        log.batches() < n,
        "{} batches for {n} records: nothing was grouped",
        log.batches()
    );
    log.close();
    assert_eq!(commits.load(Ordering::SeqCst), n);
    assert_eq!(reader.last_seq().unwrap(), n);
    assert_eq!(
        scan_all(reader.as_mut(), n - 2).unwrap(),
        vec![rec(n - 1), rec(n)]
    );
}

fn a_failed_append_stops_the_writer_and_nothing_after_is_acknowledged(fresh: Fresh) {
    let mut s = fresh();
    s.append(&[rec(1)]).unwrap();
    let failed = Arc::new(std::sync::Mutex::new(None));
    let f = failed.clone();
    // The writer is told the log ends at 0: its first record (1) is a repeat.
    let log = GroupCommit::start(
        s.reopen().unwrap(),
        0,
        16,
        Box::new(move |r| {
            if let Err(e) = r {
                *f.lock().unwrap() = Some(e);
            }
        }),
    );
    log.append(rec(1)).unwrap();
    let e = log.wait_durable(1).unwrap_err();
    assert_eq!(e.durable_seq, 0);
    log.close();
    assert!(log.append(rec(2)).is_err());
    assert!(failed.lock().unwrap().is_some(), "the callback heard of it");
    assert_eq!(s.last_seq().unwrap(), 1);
}

fn run_suite(name: &str, fresh: Fresh) {
    let cases: [Case; 6] = [
        ("appends_read_back_in_order", appends_read_back_in_order),
        (
            "a_gap_or_a_repeat_is_refused_and_the_batch_leaves_nothing",
            a_gap_or_a_repeat_is_refused_and_the_batch_leaves_nothing,
        ),
        ("a_long_log_scans_whole", a_long_log_scans_whole),
        (
            "snapshots_keep_the_latest_and_meta_holds",
            snapshots_keep_the_latest_and_meta_holds,
        ),
        (
            "group_commit_batches_and_acknowledges_only_what_is_durable",
            group_commit_batches_and_acknowledges_only_what_is_durable,
        ),
        (
            "a_failed_append_stops_the_writer_and_nothing_after_is_acknowledged",
            a_failed_append_stops_the_writer_and_nothing_after_is_acknowledged,
        ),
    ];
    for (case, f) in cases {
        eprintln!("{name}: {case}");
        f(fresh);
    }
}

#[test]
fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    run_suite("sqlite", &mut || {
        n += 1;
        Box::new(SqliteStore::open(&dir.path().join(format!("s{n}.db"))).unwrap())
    });
}

#[test]
fn postgres_store_passes_the_suite() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let mut n = 0;
    run_suite("postgres", &mut || {
        n += 1;
        let url = pg.create_db(&format!("suite{n}")).unwrap();
        Box::new(PgStore::open(&url).unwrap())
    });
}

#[test]
fn postgres_leases_elect_one_leader_and_fence_the_deposed_one() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let url = pg.create_db("lease").unwrap();
    let a = PgStore::open(&url).unwrap();
    let b = PgStore::open(&url).unwrap();
    let l = a.lease().unwrap();
    assert_eq!((l.term, l.live()), (0, false));
    let ta = a.acquire_lease("a", "http://a", 400).unwrap().unwrap();
    assert_eq!(ta, 1);
    assert_eq!(
        b.acquire_lease("b", "http://b", 400).unwrap(),
        None,
        "a holds it"
    );
    let l = b.lease().unwrap();
    assert!(l.live() && l.holder == "a" && l.url == "http://a", "{l:?}");
    assert!(a.renew_lease("a", ta, 400).unwrap());
    assert!(
        !b.renew_lease("b", ta, 400).unwrap(),
        "only the holder renews"
    );

    let mut wa = PgStore::fenced(&url, ta).unwrap();
    wa.append(&[rec(1), rec(2)]).unwrap();

    // a stops renewing (frozen); once the lease has expired on PostgreSQL's clock b takes
    // it with a higher term.
    std::thread::sleep(Duration::from_millis(500));
    let tb = b.acquire_lease("b", "http://b", 10_000).unwrap().unwrap();
    assert_eq!(tb, ta + 1);
    assert!(!a.renew_lease("a", ta, 400).unwrap(), "a's term is over");

    // a wakes and writes: refused in the transaction, nothing written.
    let e = wa.append(&[rec(3)]).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Fenced {
                mine: 1,
                current: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("another replica leads"), "{e}");
    let mut wb = PgStore::fenced(&url, tb).unwrap();
    assert_eq!(wb.last_seq().unwrap(), 2);
    wb.append(&[rec(3)]).unwrap();
    assert!(wa.append(&[rec(4)]).is_err());

    // A clean stop releases the lease: the next replica need not wait it out.
    b.release_lease("b", tb).unwrap();
    assert!(!a.lease().unwrap().live());
    assert_eq!(a.acquire_lease("a", "http://a", 400).unwrap(), Some(tb + 1));
}

/// A replica frozen inside an append (holding its share lock on the lease row) must not block
/// the next election for longer than PostgreSQL's idle-in-transaction limit on its session.
#[test]
fn postgres_an_election_is_not_blocked_by_a_replica_frozen_inside_a_transaction() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    // An operator's own options in the URL are kept beside gosok's.
    let url = format!(
        "{}?options=-c%20application_name%3Dfrozen-test",
        pg.create_db("frozen").unwrap()
    );
    let a = PgStore::open(&url).unwrap();
    let ta = a.acquire_lease("a", "http://a", 300).unwrap().unwrap();
    // What an append does first, on a session made as gosok makes them; then the client
    // stops talking, as a frozen process would.
    let mut frozen = gosok_store::pg_session_config(&url)
        .unwrap()
        .connect(postgres::NoTls)
        .unwrap();
    let settings = frozen
        .query_one(
            "SELECT current_setting('idle_in_transaction_session_timeout'), current_setting('application_name')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (settings.get::<_, String>(0), settings.get::<_, String>(1)),
        (
            format!("{}ms", gosok_store::IDLE_IN_TRANSACTION_MS),
            "frozen-test".to_string()
        )
    );
    let mut tx = frozen.transaction().unwrap();
    tx.query_one("SELECT term FROM gosok_leader WHERE id = 1 FOR SHARE", &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // The lease has run out; the election's UPDATE waits for the frozen session's lock,
    // which PostgreSQL ends after the limit.
    let b = PgStore::open(&url).unwrap();
    let started = std::time::Instant::now();
    let tb = b.acquire_lease("b", "http://b", 10_000).unwrap();
    let waited = started.elapsed();
    assert_eq!(tb, Some(ta + 1));
    assert!(
        waited < Duration::from_millis(gosok_store::IDLE_IN_TRANSACTION_MS + 3_000),
        "the election waited {waited:?}"
    );
    // The frozen session was ended: when it wakes, its transaction is gone.
    assert!(tx.commit().is_err());
}

#[test]
fn postgres_detects_a_damaged_record_and_survives_a_restart_of_the_server() {
    let pg = Cluster::start().expect("a throwaway PostgreSQL cluster");
    let url = pg.create_db("damage").unwrap();
    let mut s = PgStore::open(&url).unwrap();
    s.append(&(1..=4).map(rec).collect::<Vec<_>>()).unwrap();
    // Crash PostgreSQL (no checkpoint) and start it again: committed appends are there,
    // and the old connection reports an error instead of hanging.
    pg.stop().unwrap();
    assert!(s.append(&[rec(5)]).is_err());
    pg.start_server().unwrap();
    let mut s = PgStore::open(&url).unwrap();
    assert_eq!(s.last_seq().unwrap(), 4);
    let mut raw = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    raw.execute("UPDATE gosok_events SET body = 'bodx 3' WHERE seq = 3", &[])
        .unwrap();
    let e = scan_all(&mut s, 0).unwrap_err().to_string();
    assert!(e.contains("log record 3 fails its checksum"), "{e}");
    raw.execute("DELETE FROM gosok_events WHERE seq = 3", &[])
        .unwrap();
    let e = scan_all(&mut s, 0).unwrap_err().to_string();
    assert!(e.contains("record 3 is missing"), "{e}");
}
