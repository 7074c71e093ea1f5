//! Where GET /v1/queue spends its time:
//! `cargo run --release -p gosok-server --example queue_time -- DIR`.
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let cfg = gosok_server::config::Config::default();
    let mut store = gosok_store::SqliteStore::open(&dir.join("gosok.db"))?;
    let (core, _, _) = gosok_server::replay(&mut store, &cfg)?;
    for _ in 0..3 {
        let e = core.engine();
        let t = Instant::now();
        let order = e.queue();
        let t_queue = t.elapsed();
        let t = Instant::now();
        let mut n = 0;
        for id in &order {
            if e.wait_reason(*id).is_some() && core.job(id.0).is_some() {
                n += 1;
            }
        }
        let t_wait = t.elapsed();
        let t = Instant::now();
        let body = gosok_server::api::queue_json(&core, None, usize::MAX)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        println!(
            "{} pending: queue() {:?}, wait_reason+job {:?} ({n}), whole body {:?} ({} bytes)",
            order.len(),
            t_queue,
            t_wait,
            t.elapsed(),
            body.len()
        );
    }
    Ok(())
}
