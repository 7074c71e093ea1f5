//! `gosok server backup` and `gosok server migrate`: copies of a highway's log.

use std::path::{Path, PathBuf};

use clap::Args;
use gosok_store::{PgStore, SqliteStore, Store};

#[derive(Args)]
pub struct BackupArgs {
    /// The store to back up: `sqlite:DIR` (a data directory, or a store file) or a
    /// PostgreSQL URL. It may be in use: the copy is online.
    #[arg(long)]
    from: String,
    /// The backup: a new SQLite store file (its snapshot goes beside it, in
    /// NAME.snapshots.EXT). Copy both into a data directory as gosok.db and
    /// gosok.snapshots.db to serve it, or `gosok server migrate --from sqlite:FILE`.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Where the highway is: `sqlite:DIR` (a data directory, or a store file) or a
    /// PostgreSQL URL. Stop its controller first: what it writes after the copy starts is
    /// not moved.
    #[arg(long)]
    from: String,
    /// Where it goes (empty): a PostgreSQL URL or `sqlite:DIR`.
    #[arg(long)]
    to: String,
}

/// Opens a store named as `sqlite:PATH` or `postgres://…`.
fn open(spec: &str, create: bool) -> anyhow::Result<Box<dyn Store>> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Box::new(PgStore::open(spec).map_err(|e| {
            anyhow::anyhow!("{}: {e}", PgStore::display_url(spec))
        })?));
    }
    let Some(path) = spec.strip_prefix("sqlite:") else {
        anyhow::bail!(
            "{spec:?}: expected sqlite:DIR (or sqlite:FILE) or postgres://USER@HOST:PORT/DB"
        );
    };
    let path = Path::new(path);
    let file = if path.is_dir() || (create && path.extension().is_none()) {
        std::fs::create_dir_all(path)?;
        path.join("gosok.db")
    } else {
        path.to_path_buf()
    };
    anyhow::ensure!(
        create || file.exists(),
        "{}: no store there",
        file.display()
    );
    Ok(Box::new(SqliteStore::open(&file)?))
}

pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.out.exists(),
        "--out {}: exists already; a backup goes into a new file",
        a.out.display()
    );
    let mut from = open(&a.from, false)?;
    let mut to = SqliteStore::open(&a.out)?;
    let snapshots = to.snapshot_path();
    let c = gosok_server::backup::copy(from.as_mut(), &mut to)?;
    println!(
        "backed up {} log records{} to {}{}",
        c.records,
        if c.snapshot_seq > 0 {
            format!(" and the snapshot of record {}", c.snapshot_seq)
        } else {
            String::new()
        },
        a.out.display(),
        if c.snapshot_seq > 0 {
            format!(" (snapshot in {})", snapshots.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

pub fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let mut from = open(&a.from, false)?;
    let mut to = open(&a.to, true)?;
    let c = gosok_server::backup::copy(from.as_mut(), to.as_mut())?;
    println!(
        "moved {} log records{}; serve it with `gosok server run --data-dir DIR --store {}`",
        c.records,
        if c.snapshot_seq > 0 {
            format!(" and the snapshot of record {}", c.snapshot_seq)
        } else {
            String::new()
        },
        match a.to.strip_prefix("sqlite:") {
            Some(_) => "sqlite".to_string(),
            None => PgStore::display_url(&a.to),
        }
    );
    Ok(())
}
