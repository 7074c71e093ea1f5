//! Where restart time goes: `cargo run --release -p gosok-server --example replay_profile -- DIR`.
use std::time::Instant;

use gosok_server::config::Config;
use gosok_server::core::Core;
use gosok_server::entry::Entry;
use gosok_store::{SqliteStore, Store};

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("DIR"));
    let mut store = SqliteStore::open(&dir.join("gosok.db"))?;
    let t = Instant::now();
    let mut n = 0u64;
    store.scan(0, &mut |_| {
        n += 1;
        Ok(())
    })?;
    println!("scan only: {n} records in {:?}", t.elapsed());
    let t = Instant::now();
    let mut entries = Vec::new();
    store.scan(0, &mut |r| {
        entries.push((
            r.seq,
            r.at_ms,
            serde_json::from_slice::<Entry>(&r.body).unwrap(),
        ));
        Ok(())
    })?;
    println!("scan + parse: {:?}", t.elapsed());
    let t = Instant::now();
    let mut core = Core::new(Config::default().engine, Box::new(|_| None)).unwrap();
    let (mut tick, mut submit) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for (seq, at, e) in &entries {
        let t1 = Instant::now();
        core.apply_owned(*seq, *at, e.clone()).ok();
        if matches!(e, Entry::Tick { .. }) {
            tick += t1.elapsed()
        } else {
            submit += t1.elapsed()
        }
    }
    println!(
        "apply: {:?} (ticks {:?}, others {:?})",
        t.elapsed(),
        tick,
        submit
    );
    // The engine alone, on the same events.
    let mut topo = None;
    for (_, _, e) in &entries {
        if let Entry::Topology { cluster, .. } = e {
            topo = Some(cluster.clone());
        }
    }
    let mut engine = gosok_engine::Engine::new(
        gosok_model::Catalog::builtin(),
        &topo.unwrap(),
        Default::default(),
    )
    .unwrap();
    let t = Instant::now();
    for (_, _, e) in &entries {
        match e {
            Entry::Submit {
                job, tenant, spec, ..
            } => {
                engine
                    .apply(gosok_engine::Event::Submit {
                        id: gosok_engine::JobId(*job),
                        tenant: tenant.clone(),
                        spec: spec.clone(),
                    })
                    .ok();
            }
            Entry::Tick { now_s } => {
                engine
                    .apply(gosok_engine::Event::AdvanceTime { now_s: *now_s })
                    .ok();
                engine.schedule();
            }
            _ => {}
        }
    }
    println!("engine alone: {:?}", t.elapsed());
    let t = Instant::now();
    let mut specs = Vec::new();
    for (_, _, e) in &entries {
        if let Entry::Submit { spec, tenant, .. } = e {
            specs.push((spec.clone(), tenant.clone()));
        }
    }
    println!("clone spec+tenant: {:?}", t.elapsed());
    Ok(())
}

#[allow(dead_code)]
fn engine_only() {}
