//! Crash safety of the log: a child process appends from several threads through group
//! commit and prints each sequence number once it is acknowledged as durable; the parent
//! kills it with SIGKILL at several points and reopens the same file. Every acknowledged
//! record must be there exactly once, intact, and the log must stay a gapless prefix.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gosok_store::{GroupCommit, Record, SqliteStore, Store};

const CHILD_ENV: &str = "GOSOK_STORE_CRASH_CHILD";

fn body(seq: u64) -> Vec<u8> {
    // Long enough to span pages now and then, and checkable.
    format!(
        "{{\"job\":{seq},\"pad\":\"{}\"}}",
        "x".repeat((seq % 7 * 300) as usize)
    )
    .into_bytes()
}

/// The child: appends until killed (or 60 s pass, so that it never outlives a broken test).
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut store = SqliteStore::open(Path::new(&path)).unwrap();
    let last = store.last_seq().unwrap();
    let gc = Arc::new(GroupCommit::start(
        Box::new(store),
        last,
        512,
        Box::new(|_| {}),
    ));
    let next = Arc::new(Mutex::new(last));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let start = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gc, next, out) = (gc.clone(), next.clone(), out.clone());
            std::thread::spawn(move || {
                while start.elapsed() < Duration::from_secs(60) {
                    let seq = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        gc.append(Record {
                            seq: *n,
                            at_ms: *n,
                            kind: "submit".into(),
                            body: body(*n),
                        })
                        .unwrap();
                        *n
                    };
                    gc.wait_durable(seq).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "acked {seq}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn every_acknowledged_append_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gosok.db");
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0;
    // Kill after this many acknowledgements in each round, on the same file.
    for kill_after in [1u64, 37, 400, 2500] {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        while (acked.len() as u64) < kill_after {
            let Some(Ok(line)) = lines.next() else {
                panic!("the child stopped before {kill_after} acknowledgements");
            };
            if let Some(n) = line.strip_prefix("acked ") {
                acked.push(n.trim().parse::<u64>().unwrap());
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines already written to the pipe are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ") {
                acked.push(n.trim().parse::<u64>().unwrap());
            }
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let last = s.last_seq().unwrap();
        let max_acked = *acked.iter().max().unwrap();
        assert!(
            last >= max_acked,
            "round {kill_after}: {max_acked} was acknowledged but the log ends at {last}"
        );
        let mut expect = 1;
        s.scan(0, &mut |r| {
            assert_eq!(r.seq, expect, "the log has a gap or a repeat");
            assert_eq!(r.body, body(r.seq), "record {} is not intact", r.seq);
            expect += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(expect - 1, last);
        total_acked += acked.len();
    }
    assert!(total_acked >= 2938);
}
