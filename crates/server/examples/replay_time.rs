//! Times `gosok_server::replay` on a data directory:
//! `cargo run --release -p gosok-server --example replay_time -- DIR [ROUNDS]`.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let rounds: usize = args.next().map_or(3, |r| r.parse().unwrap_or(3));
    let cfg = gosok_server::config::Config::default();
    for _ in 0..rounds {
        let mut store = gosok_store::SqliteStore::open(&dir.join("gosok.db"))?;
        let t = std::time::Instant::now();
        let (core, last, _) = gosok_server::replay(&mut store, &cfg)?;
        println!(
            "replayed {last} records in {:?} ({} jobs)",
            t.elapsed(),
            core.job_count()
        );
    }
    Ok(())
}
