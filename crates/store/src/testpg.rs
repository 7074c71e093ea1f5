//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` and `pg_ctl` from the
//! system's PostgreSQL binaries on a temporary directory and a free loopback port, stopped
//! and removed on drop.
//!
//! PostgreSQL refuses to run as root; as root the cluster runs as the system user
//! `gosok-pg` (created when missing), which owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the PostgreSQL binaries are: `GOSOK_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("GOSOK_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// The user the server runs as when we are root.
    user: Option<&'static str>,
}

const USER: &str = "gosok-pg";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Cluster {
    /// Creates and starts a cluster; Err says why (no binaries, initdb failed...).
    pub fn start() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or(
            "no PostgreSQL binaries (install the `postgresql` package, or set GOSOK_PG_BIN)",
        )?;
        let user = if is_root() {
            let exists = Command::new("id")
                .arg("-u")
                .arg(USER)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !exists {
                run(
                    Command::new("useradd")
                        .args([
                            "--system",
                            "--no-create-home",
                            "--shell",
                            "/usr/sbin/nologin",
                        ])
                        .arg(USER),
                    "useradd",
                )
                .or_else(|e| {
                    // Another test binary may have created it meanwhile.
                    let now = Command::new("id").arg("-u").arg(USER).output();
                    if now.map(|o| o.status.success()).unwrap_or(false) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
            Some(USER)
        } else {
            None
        };
        let base =
            std::env::temp_dir().join(format!("gosok-pg-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        if let Some(u) = user {
            run(Command::new("chown").arg(u).arg(&base), "chown")?;
        }
        let c = Cluster {
            dir: base,
            bin,
            port: free_port()?,
            user,
        };
        c.as_user(c.bin.join("initdb"))
            .args(["-D"])
            .arg(c.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(format!("initdb: {}", String::from_utf8_lossy(&o.stderr)))
                }
            })?;
        c.start_server()?;
        Ok(c)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn as_user(&self, program: PathBuf) -> Command {
        match self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts the server (again, after [`Cluster::stop`]) on the same port and data.
    pub fn start_server(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.dir.display()
        );
        run(
            self.as_user(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-o", &opts, "-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
    }

    /// Stops the server at once (`-m immediate`: as a crash would, no checkpoint).
    pub fn stop(&self) -> Result<(), String> {
        run(
            self.as_user(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        )
    }

    /// A URL for database `db` of this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (one per test, so tests of one binary share the cluster).
    pub fn create_db(&self, name: &str) -> Result<String, String> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| e.to_string())?;
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(|e| e.to_string())?;
        Ok(self.url(name))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
