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
        private_dir(path)?;
        path.join("gosok.db")
    } else {
        path.to_path_buf()
    };
    if create {
        private_file(&file)?;
    }
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
    // A backup holds every tenant's log (job environments included): readable by its owner
    // only, as the controller's own data directory is.
    private_file(&a.out)?;
    let mut to = SqliteStore::open(&a.out)?;
    let snapshots = to.snapshot_path();
    private_file(&snapshots)?;
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

/// A directory (and its parents) that only its owner may enter, as the server keeps its own.
fn private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Creates `path` empty with owner-only permissions unless it exists, so that the SQLite file
/// (and the journal files SQLite gives the same mode) never exist readable by others.
fn private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}
