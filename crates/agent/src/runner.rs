//! One task as a process: its own process group, its logs in the work directory, its runtime
//! limit, and a stop that leaves no process of the group behind.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gosok_model::agent::EndReason;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub command: Vec<String>,
    /// Added to the agent's own environment.
    pub env: BTreeMap<String, String>,
    /// The working directory; the task's directory when absent.
    pub workdir: Option<PathBuf>,
    /// The task's directory (`WORK/JOB/ATTEMPT/TASK`): its logs are written there.
    pub dir: PathBuf,
    pub limit: Option<Duration>,
    pub grace: Duration,
}

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
    child: Child,
    pgid: i32,
    started: Instant,
    limit: Option<Duration>,
    grace: Duration,
    stop: Option<Stop>,
    /// The leader's status once reaped, while other processes of its group remain.
    reaped: Option<ExitStatus>,
}

/// What `Running::poll` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    Running,
    /// Every process of the group is gone. `None`: it was killed and is not reported.
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
    OpenOptions::new().create(true).append(true).open(path)
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

/// Makes this process the parent of its tasks' orphans (Linux), so that `poll` reaps them at
/// once instead of waiting for init, which in containers may reap late or never: an
/// unreaped zombie keeps its group alive and a stop would last its whole grace period.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with an integer argument has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
    }
}

/// Reaps the group's zombies that were handed to this process. Only after the leader is
/// reaped: waitpid(-pgid) would otherwise take the leader's status from `Child`.
fn reap_group(pgid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let pid = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

impl Running {
    /// Starts the task. Must be called from a thread that lives as long as the agent: the
    /// kernel sends PR_SET_PDEATHSIG when the thread that forked the task exits.
    pub fn spawn(spec: &Spec) -> Result<Running, String> {
        let Some(program) = spec.command.first() else {
            return Err("the command is empty".into());
        };
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| format!("cannot create {}: {e}", spec.dir.display()))?;
        let out = log_file(&stdout_path(&spec.dir))
            .map_err(|e| format!("cannot open {}: {e}", stdout_path(&spec.dir).display()))?;
        let err = log_file(&stderr_path(&spec.dir))
            .map_err(|e| format!("cannot open {}: {e}", stderr_path(&spec.dir).display()))?;
        let cwd = spec.workdir.clone().unwrap_or_else(|| spec.dir.clone());
        let mut cmd = Command::new(program);
        cmd.args(&spec.command[1..])
            .envs(&spec.env)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpid has no preconditions.
            let agent = unsafe { libc::getpid() };
            // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
            // functions (prctl, getppid, _exit).
            unsafe {
                cmd.pre_exec(move || {
                    // Without this a SIGKILLed agent would leave its tasks running unfenced.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The agent may have died before prctl took effect.
                    if libc::getppid() != agent {
                        libc::_exit(137);
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| {
            if spec.workdir.is_some() && !cwd.is_dir() {
                format!(
                    "cannot start {program:?}: working directory {}: {e}",
                    cwd.display()
                )
            } else {
                format!("cannot start {program:?}: {e}")
            }
        })?;
        let pgid = child.id() as i32;
        Ok(Running {
            child,
            pgid,
            started: Instant::now(),
            limit: spec.limit,
            grace: spec.grace,
            stop: None,
            reaped: None,
        })
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether a stop has begun (or the task is already over).
    pub fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    /// SIGTERM to the group now, SIGKILL after the grace period. A second call does not
    /// extend the grace, but `Killed` overrides `Limit` (the task is no longer wanted).
    pub fn stop(&mut self, cause: StopCause, now: Instant) {
        match &mut self.stop {
            Some(s) => {
                if cause == StopCause::Killed && s.cause == StopCause::Limit {
                    s.cause = cause;
                }
            }
            None => {
                signal_group(self.pgid, libc::SIGTERM);
                self.stop = Some(Stop {
                    cause,
                    kill_at: now + self.grace,
                });
            }
        }
    }

    /// SIGKILL to the group now: for fencing, where another node may already run the task.
    pub fn kill(&mut self, now: Instant) {
        signal_group(self.pgid, libc::SIGKILL);
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
            match self.child.try_wait() {
                Ok(Some(status)) => self.reaped = Some(status),
                Ok(None) => {}
                Err(_) => {
                    // Only ECHILD: someone else reaped it; treat it as gone.
                    self.reaped = Some(ExitStatus::from_raw(0));
                }
            }
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
            signal_group(self.pgid, libc::SIGKILL);
        }
        let Some(status) = self.reaped else {
            return Poll::Running;
        };
        // The task is over when its leader is; what it left behind goes with it at once,
        // unless a stop is under way: then the rest of the group keeps its grace period.
        let stop = self.stop.get_or_insert(Stop {
            cause: StopCause::Exited,
            kill_at: now,
        });
        reap_group(self.pgid);
        if now < stop.kill_at && group_alive(self.pgid) {
            return Poll::Running;
        }
        signal_group(self.pgid, libc::SIGKILL);
        reap_group(self.pgid);
        // SIGKILL takes effect asynchronously; wait for it (bounded, for processes stuck in
        // the kernel) so that none is left to become an unreaped zombie of the agent.
        if group_alive(self.pgid) && now < stop.kill_at + Duration::from_secs(5) {
            return Poll::Running;
        }
        let reason = match stop.cause {
            StopCause::Exited => EndReason::Exited,
            StopCause::Limit => EndReason::Limit,
            StopCause::Killed => return Poll::Ended(None),
        };
        Poll::Ended(Some(Outcome::of(status, reason)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A task is never left behind by dropping its handle.
        if self.reaped.is_none() {
            signal_group(self.pgid, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
