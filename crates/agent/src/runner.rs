//! One task as a process: its own process group (and, sandboxed, its own control group), its
//! logs written by the agent, its runtime limit, and a stop that leaves no process behind.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gosok_model::agent::EndReason;

use crate::sandbox::{Prepared, TaskCgroup};

/// What to run.
#[derive(Debug)]
pub struct Spec {
    pub command: Vec<String>,
    /// The task's whole environment (the job's and gosok's variables): nothing of the
    /// agent's own environment reaches a task.
    pub env: BTreeMap<String, String>,
    /// The account name the task sees in `USER` and `LOGNAME`.
    pub user: String,
    /// The working directory the job asked for; its scratch directory when absent.
    pub workdir: Option<PathBuf>,
    /// Where the agent writes the task's logs (`stdout.log`, `stderr.log`); never shown to
    /// the task.
    pub log_dir: PathBuf,
    /// The task's scratch directory: its working directory and `HOME`, removed when it ends.
    pub run_dir: PathBuf,
    pub limit: Option<Duration>,
    pub grace: Duration,
    /// The sandbox prepared for it; None with `--isolation none`.
    pub sandbox: Option<Prepared>,
}

/// The `PATH` a task starts with unless its job sets one.
pub const TASK_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: EndReason,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
}

impl Outcome {
    pub fn spawn_failed(message: String) -> Outcome {
        Outcome {
            reason: EndReason::SpawnFailed,
            exit_code: None,
            signal: None,
            message,
        }
    }

    fn of(status: ExitStatus, reason: EndReason) -> Outcome {
        Outcome {
            reason,
            exit_code: status.code(),
            signal: status.signal(),
            message: String::new(),
        }
    }
}

/// Why a task is being stopped; only a stop at the limit is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// Not a stop: the leader exited by itself and the rest of its group is being cleared.
    Exited,
    Limit,
    /// It left the desired set, its node lost its lease, or the agent shuts down.
    Killed,
}

#[derive(Debug)]
struct Stop {
    cause: StopCause,
    kill_at: Instant,
}

/// A started task.
#[derive(Debug)]
pub struct Running {
    pid: i32,
    started: Instant,
    limit: Option<Duration>,
    grace: Duration,
    stop: Option<Stop>,
    /// The leader's status once reaped, while other processes of its group remain.
    reaped: Option<ExitStatus>,
    /// Its control group (sandboxed tasks): how every process it made is found and killed,
    /// whatever process group or session it moved to.
    cgroup: Option<TaskCgroup>,
    run_dir: PathBuf,
    /// The control group and scratch directory are released once.
    cleaned: bool,
}

/// What `Running::poll` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    Running,
    /// Every process of the task is gone. `None`: it was killed and is not reported.
    Ended(Option<Outcome>),
}

pub fn stdout_path(dir: &Path) -> PathBuf {
    dir.join("stdout.log")
}

pub fn stderr_path(dir: &Path) -> PathBuf {
    dir.join("stderr.log")
}

fn log_file(path: &Path) -> std::io::Result<File> {
    // Append: a task's directory is never reused by another run, but nothing is lost if it is.
    // Only the agent reads it (the controller proxies it to the job's tenant).
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Signals a whole process group; false when no process of it is left.
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory effects; a negative pid addresses the group.
    let rc = unsafe { libc::kill(-pgid, sig) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether any process of the group is still there (zombies count until reaped).
pub fn group_alive(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

/// Makes this process the parent of its tasks' orphans (Linux), so that they are reaped at
/// once instead of waiting for init, which in containers may reap late or never.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with an integer argument has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
    }
}

/// The agent reaps its children itself: task leaders (whose status it keeps until their
/// `Running` asks) and orphans of tasks handed to it as subreaper (reaped and forgotten), so
/// that no zombie outlives a task. The lock is held across a spawn and its registration, so
/// that a reap in between cannot take a new leader's status.
mod reaper {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// Leader pid → its raw wait status once reaped.
    static LEADERS: Mutex<BTreeMap<i32, Option<i32>>> = Mutex::new(BTreeMap::new());

    pub fn lock() -> MutexGuard<'static, BTreeMap<i32, Option<i32>>> {
        LEADERS.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait(pid: i32, flags: i32) -> (i32, i32) {
        let mut st = 0;
        // SAFETY: st is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, flags) };
        (r, st)
    }

    /// `waitpid(pid, WNOHANG)` through the table. None: still running.
    pub fn try_reap(pid: i32) -> Option<i32> {
        let mut l = lock();
        if let Some(Some(st)) = l.get(&pid) {
            return Some(*st);
        }
        let (r, st) = wait(pid, libc::WNOHANG);
        if r == pid {
            l.insert(pid, Some(st));
            Some(st)
        } else if r < 0 {
            // ECHILD: gone without a status seen here; count it as a plain exit.
            l.insert(pid, Some(0));
            Some(0)
        } else {
            None
        }
    }

    /// Reaps every child that has exited (`pgid`: only that process group's).
    pub fn reap(pgid: Option<i32>) {
        let mut l = lock();
        loop {
            let (pid, st) = wait(pgid.map_or(-1, |g| -g), libc::WNOHANG);
            if pid <= 0 {
                return;
            }
            if let Some(slot) = l.get_mut(&pid) {
                *slot = Some(st);
            }
        }
    }

    /// Waits for a leader that was just SIGKILLed.
    pub fn wait_for(pid: i32) {
        if matches!(lock().get(&pid), Some(Some(_))) {
            return;
        }
        let _ = wait(pid, 0);
    }

    pub fn forget(pid: i32) {
        lock().remove(&pid);
    }
}

/// Reaps every exited child of the agent: task leaders keep their status for their
/// `Running`, orphans that tasks left to the agent are reaped and forgotten. The agent calls
/// it once per tick.
pub fn reap_children() {
    reaper::reap(None);
}

/// Runs `f` (which starts and waits for a short-lived child of its own) while no task reaping
/// can take that child's status.
pub fn without_reaping<T>(f: impl FnOnce() -> T) -> T {
    let _guard = reaper::lock();
    f()
}

impl Running {
    /// Starts the task. Must be called from a thread that lives as long as the agent: the
    /// kernel sends PR_SET_PDEATHSIG when the thread that forked the task exits.
    pub fn spawn(spec: Spec) -> Result<Running, String> {
        let Some(program) = spec.command.first() else {
            return Err("the command is empty".into());
        };
        let io =
            |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
        std::fs::create_dir_all(&spec.log_dir).map_err(|e| io("create", &spec.log_dir, e))?;
        let out = log_file(&stdout_path(&spec.log_dir))
            .map_err(|e| io("open", &stdout_path(&spec.log_dir), e))?;
        let err = log_file(&stderr_path(&spec.log_dir))
            .map_err(|e| io("open", &stderr_path(&spec.log_dir), e))?;
        if spec.sandbox.is_none() {
            std::fs::create_dir_all(&spec.run_dir).map_err(|e| io("create", &spec.run_dir, e))?;
        }
        let mut cmd = Command::new(program);
        cmd.args(&spec.command[1..])
            .env_clear()
            .env("PATH", TASK_PATH)
            .env("HOME", &spec.run_dir)
            .env("USER", &spec.user)
            .env("LOGNAME", &spec.user)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: getpid has no preconditions.
        let agent = unsafe { libc::getpid() };
        let mut sandboxed = None;
        let Spec {
            sandbox,
            run_dir,
            workdir,
            limit,
            grace,
            ..
        } = spec;
        let run_dir = match sandbox {
            Some(Prepared {
                cgroup,
                run_dir,
                entry,
                ..
            }) => {
                // SAFETY: `enter` makes only async-signal-safe system calls on data prepared
                // before the fork.
                unsafe {
                    cmd.pre_exec(move || entry.enter(agent));
                }
                sandboxed = Some(cgroup);
                run_dir
            }
            None => {
                cmd.current_dir(workdir.as_deref().unwrap_or(&run_dir));
                // SAFETY: the closure runs between fork and exec and calls only
                // async-signal-safe functions (prctl, getppid, _exit).
                unsafe {
                    cmd.pre_exec(move || {
                        // Without this a SIGKILLed agent would leave its tasks running unfenced.
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The agent may have died before prctl took effect.
                        if libc::getppid() != agent {
                            libc::_exit(137);
                        }
                        Ok(())
                    });
                }
                run_dir
            }
        };
        let spawned = {
            let mut leaders = reaper::lock();
            cmd.spawn().map(|child| {
                let pid = child.id() as i32;
                leaders.insert(pid, None);
                pid
            })
        };
        let cgroup = sandboxed;
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(g) = &cgroup {
                    g.kill();
                    g.remove();
                }
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(match &workdir {
                    Some(w) if !w.is_dir() || e.raw_os_error() == Some(libc::EACCES) => {
                        format!(
                            "cannot start {program:?}: working directory {}: {e}",
                            w.display()
                        )
                    }
                    _ => format!("cannot start {program:?}: {e}"),
                });
            }
        };
        Ok(Running {
            pid,
            started: Instant::now(),
            limit,
            grace,
            stop: None,
            reaped: None,
            cgroup,
            run_dir,
            cleaned: false,
        })
    }

    /// The process group's id (the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether a stop has begun (or the task is already over).
    pub fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    fn signal(&self, sig: i32) {
        if let Some(g) = &self.cgroup {
            if sig == libc::SIGKILL {
                g.kill();
            } else {
                g.signal(sig);
            }
        }
        signal_group(self.pid, sig);
    }

    /// Whether any process of the task is left: its control group's, else its group's.
    fn alive(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|g| !g.is_empty()) || group_alive(self.pid)
    }

    /// SIGTERM to the task now, SIGKILL after the grace period. A second call does not
    /// extend the grace, but `Killed` overrides `Limit` (the task is no longer wanted).
    pub fn stop(&mut self, cause: StopCause, now: Instant) {
        match &mut self.stop {
            Some(s) => {
                if cause == StopCause::Killed && s.cause == StopCause::Limit {
                    s.cause = cause;
                }
            }
            None => {
                self.signal(libc::SIGTERM);
                self.stop = Some(Stop {
                    cause,
                    kill_at: now + self.grace,
                });
            }
        }
    }

    /// SIGKILL to the task now: for fencing, where another node may already run the task.
    pub fn kill(&mut self, now: Instant) {
        self.signal(libc::SIGKILL);
        match &mut self.stop {
            Some(s) => {
                if s.cause == StopCause::Limit {
                    s.cause = StopCause::Killed;
                }
                s.kill_at = s.kill_at.min(now);
            }
            None => {
                self.stop = Some(Stop {
                    cause: StopCause::Killed,
                    kill_at: now,
                })
            }
        }
    }

    /// Reaps the leader if it exited, enforces the limit and the grace period. Cheap enough
    /// to call for a thousand tasks every tick.
    pub fn poll(&mut self, now: Instant) -> Poll {
        if self.reaped.is_none() {
            self.reaped = reaper::try_reap(self.pid).map(ExitStatus::from_raw);
        }
        if let Some(limit) = self.limit
            && self.stop.is_none()
            && self.reaped.is_none()
            && now.duration_since(self.started) >= limit
        {
            self.stop(StopCause::Limit, now);
        }
        if let Some(s) = &self.stop
            && now >= s.kill_at
        {
            self.signal(libc::SIGKILL);
        }
        let Some(status) = self.reaped else {
            return Poll::Running;
        };
        // The task is over when its leader is; what it left behind goes with it at once,
        // unless a stop is under way: then the rest of it keeps its grace period.
        let kill_at = self
            .stop
            .get_or_insert(Stop {
                cause: StopCause::Exited,
                kill_at: now,
            })
            .kill_at;
        reaper::reap(Some(self.pid));
        let alive = self.alive();
        if now < kill_at && alive {
            return Poll::Running;
        }
        if alive {
            self.signal(libc::SIGKILL);
            reaper::reap(Some(self.pid));
        }
        // SIGKILL takes effect asynchronously; wait for it (bounded, for processes stuck in
        // the kernel) so that none is left to become an unreaped zombie of the agent.
        if self.alive() && now < kill_at + Duration::from_secs(5) {
            return Poll::Running;
        }
        let oom = self.cgroup.as_ref().is_some_and(|g| g.oom_kills() > 0);
        self.clean_up();
        let reason = match self.stop.as_ref().map_or(StopCause::Exited, |s| s.cause) {
            StopCause::Killed => return Poll::Ended(None),
            _ if oom => EndReason::OutOfMemory,
            StopCause::Exited => EndReason::Exited,
            StopCause::Limit => EndReason::Limit,
        };
        Poll::Ended(Some(Outcome::of(status, reason)))
    }

    /// Releases the control group and the scratch directory, and forgets the leader.
    fn clean_up(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        reaper::forget(self.pid);
        if let Some(g) = &self.cgroup
            && !g.remove()
        {
            tracing::warn!(
                pid = self.pid,
                "a task's control group could not be removed"
            );
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A task is never left behind by dropping its handle.
        if self.reaped.is_none() {
            self.signal(libc::SIGKILL);
            reaper::wait_for(self.pid);
        }
        if !self.cleaned {
            if let Some(g) = &self.cgroup {
                g.kill();
            }
            self.clean_up();
        }
    }
}
