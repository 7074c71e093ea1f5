//! A `gosok up` for end-to-end tests: its controller, agents and demo tenants, in a
//! directory every sandboxed task may use, and the CLI run as a user types it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const GOSOK: &str = env!("CARGO_BIN_EXE_gosok");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `gosok up` in a directory every tenant's sandboxed task may read and write (outside
/// `/tmp`, which each sandboxed task has a private one of): the data directory is
/// `DIR/gosok-data`, and the CLI runs in `DIR`, as a user in a fresh clone would.
pub struct Up {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Up {
    pub fn start() -> Up {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let mut up = Up {
            dir,
            port: free_port(),
            child: None,
        };
        up.launch();
        up
    }

    /// The controller's address (the console is at its `/`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A token from `gosok up`'s credentials: the operator's (`None`) or a tenant's.
    pub fn token(&self, tenant: Option<&str>) -> String {
        let text =
            std::fs::read_to_string(self.path().join("gosok-data/credentials.toml")).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let t = match tenant {
            None => &v["admin_token"],
            Some(t) => &v["tenant_tokens"][t],
        };
        t.as_str().unwrap().to_string()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn launch(&mut self) {
        let mut child = Command::new(GOSOK)
            .args(["up", "--listen", &format!("127.0.0.1:{}", self.port)])
            .current_dir(self.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for l in lines.by_ref() {
            if l.unwrap().starts_with("Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
        // Every node up: the agents have registered.
        self.wait("every node up", 60, || {
            let (ok, out, _) = self.gosok(&["nodes", "--output", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            ok && v["nodes"]
                .as_array()
                .is_some_and(|n| !n.is_empty() && n.iter().all(|n| n["state"] == "up"))
        });
    }

    /// Ctrl-C: the agents stop their tasks, the controller stops; then it starts again on
    /// the same data directory.
    pub fn restart(&mut self) {
        self.interrupt();
        self.launch();
    }

    pub fn interrupt(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("gosok up did not stop within 30 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `gosok ARGS` in the directory, with the credentials as the client config and acting
    /// as seoul-startup.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(GOSOK);
        c.args(args)
            .current_dir(self.path())
            .env_remove("GOSOK_SERVER")
            .env_remove("GOSOK_TOKEN")
            .env(
                "GOSOK_CONFIG",
                self.path().join("gosok-data/credentials.toml"),
            )
            .env("GOSOK_AS", "seoul-startup");
        c
    }

    pub fn gosok(&self, args: &[&str]) -> (bool, String, String) {
        let o = self.cmd(args).output().unwrap();
        text(o)
    }

    /// Runs `gosok ARGS`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.gosok(args);
        assert!(ok, "gosok {args:?} failed:\n{out}\n{err}");
        out
    }

    /// A job as the operator sees it (any tenant's).
    pub fn job(&self, id: u64) -> Value {
        let o = self
            .cmd(&["show", &id.to_string(), "--output", "json"])
            .env_remove("GOSOK_AS")
            .output()
            .unwrap();
        let (ok, out, err) = text(o);
        assert!(ok, "gosok show {id}: {err}");
        serde_json::from_str(&out).unwrap()
    }

    pub fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn wait_state(&self, id: u64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = self.job(id);
            if last["state"] == state {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never reached {state}: {last:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Submits with `args`; the new job's id.
    pub fn submit(&self, args: &[&str]) -> u64 {
        let mut a = vec!["submit", "--output", "json"];
        a.extend_from_slice(args);
        let v: Value = serde_json::from_str(&self.ok(&a)).unwrap();
        v["id"].as_u64().unwrap()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.interrupt();
    }
}

pub fn text(o: Output) -> (bool, String, String) {
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
