//! Times snapshots on a data directory: reading the latest one, restoring it, taking one,
//! and a start from it (restore plus the records after it):
//! `cargo run --release -p gosok-server --example snapshot_time -- DIR [ROUNDS]`.
use std::time::Instant;

use gosok_store::Store;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let rounds: usize = args.next().map_or(3, |r| r.parse().unwrap_or(3));
    let cfg = gosok_server::config::Config::default();
    let mut store = gosok_store::SqliteStore::open(&dir.join("gosok.db"))?;
    let last = store.last_seq()?;
    for _ in 0..rounds {
        let t = Instant::now();
        let Some(snap) = store.latest_snapshot()? else {
            anyhow::bail!("{} holds no snapshot", dir.display());
        };
        let read = t.elapsed();
        let len = u64::from_le_bytes(snap.body[12..20].try_into()?) as usize;
        let t = Instant::now();
        let engine = gosok_engine::Engine::restore(&snap.body[20..20 + len])?;
        let engine_only = t.elapsed();
        let t = Instant::now();
        drop(engine);
        let engine_drop = t.elapsed();
        println!(
            "engine part: {len} bytes, restored in {engine_only:?} (dropped in {engine_drop:?})"
        );
        let t = Instant::now();
        let core =
            gosok_server::core::Core::restore(&snap.body, cfg.engine.clone(), Box::new(|_| None))?;
        let restored = t.elapsed();
        let t = Instant::now();
        let again = core.snapshot()?;
        let taken = t.elapsed();
        // Stored again under its own sequence number: the store's content does not change.
        let t = Instant::now();
        store.put_snapshot(&snap)?;
        let written = t.elapsed();
        println!(
            "snapshot at {} of {last} records: {} bytes, {} jobs; read {read:?}, restore {restored:?}, take {taken:?} ({} bytes), write {written:?}",
            snap.seq,
            snap.body.len(),
            core.job_count(),
            again.len()
        );
        drop(core);
        let t = Instant::now();
        let (_, _, stats) = gosok_server::replay(&mut store, &cfg)?;
        println!(
            "start: {:?} (snapshot {:?}, then {} records)",
            t.elapsed(),
            stats.snapshot_elapsed,
            stats.records - stats.snapshot_seq
        );
    }
    Ok(())
}
