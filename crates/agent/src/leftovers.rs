//! The process groups an agent started, kept in `WORK/pgids` so that the next agent on the same
//! work directory can kill what a SIGKILLed predecessor left: PR_SET_PDEATHSIG reaches a
//! task's first process only, not what it forked.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::runner::signal_group;

/// The file's first line: the boot it was written in. Process group ids of another boot mean
/// nothing (and may name someone else's processes now).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Kills every task the agent of `work_dir` started: the control groups listed in
/// `WORK/cgroups` (sandboxed tasks, with everything they forked) and the process groups
/// listed in `WORK/pgids` (this boot's only); returns how many still had processes. With
/// `remove`, the emptied control groups are removed too (an agent starting up).
pub fn kill_listed(work_dir: &Path, remove: bool) -> usize {
    let mut killed = crate::sandbox::kill_all_listed(work_dir, remove);
    if let Ok(text) = std::fs::read_to_string(work_dir.join("pgids")) {
        let mut lines = text.lines();
        if lines.next() == Some(boot_id().as_str()) {
            let pgids: BTreeSet<i32> = lines.filter_map(|l| l.trim().parse().ok()).collect();
            for pgid in pgids {
                if pgid > 1 && signal_group(pgid, libc::SIGKILL) {
                    killed += 1;
                }
            }
        }
    }
    killed
}

/// What the watchdog reads on its stdin when the agent ends cleanly (its tasks are stopped).
pub const WATCHDOG_CLEAN_EXIT: u8 = b'x';

/// Milliseconds of CLOCK_BOOTTIME: monotonic, the same for every process of the machine, and
/// counting time spent suspended (a frozen VM's lease runs out while it sleeps).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The watchdog's body: a separate process whose stdin is a pipe from the agent, on which the
/// agent writes `L<ms>` each time its lease is renewed (the deadline in [`boottime_ms`]; 0:
/// no lease held). It kills every task of the agent (a) when the lease deadline passes
/// without a renewal — the agent is frozen or stuck, and the controller will soon give its
/// tasks to other nodes — and (b) when the pipe closes without [`WATCHDOG_CLEAN_EXIT`]: the
/// agent died (SIGKILL, a crash), and PR_SET_PDEATHSIG reaches only each task's first
/// process. Returns how many groups it killed at the end.
pub fn watchdog(work_dir: &Path) -> usize {
    let mut deadline_ms: u64 = 0;
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let now = boottime_ms();
        if deadline_ms != 0 && now >= deadline_ms {
            let killed = kill_listed(work_dir, false);
            eprintln!(
                "gosok agent watchdog: the agent did not renew its lease in time; killed {killed} task groups"
            );
            deadline_ms = 0;
        }
        let timeout = if deadline_ms == 0 {
            -1
        } else {
            (deadline_ms - now).min(i32::MAX as u64) as i32
        };
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if r == 0 {
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            match b {
                WATCHDOG_CLEAN_EXIT => return 0,
                b'\n' => {
                    if let Some(ms) = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|l| l.strip_prefix('L'))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        deadline_ms = ms;
                    }
                    line.clear();
                }
                _ if line.len() < 64 => line.push(b),
                _ => {}
            }
        }
    }
    kill_listed(work_dir, false)
}

pub struct PgidFile {
    path: PathBuf,
    file: File,
    /// Lines in the file, to know when to rewrite it.
    lines: usize,
}

impl PgidFile {
    /// Kills (and removes the control groups of) what a previous agent on `work_dir` left
    /// (process groups of this boot only), then starts a fresh list. Returns the file and how many groups still had processes.
    pub fn open(work_dir: &Path) -> anyhow::Result<(PgidFile, usize)> {
        let path = work_dir.join("pgids");
        let killed = kill_listed(work_dir, true);
        let mut f = PgidFile {
            file: {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)?
            },
            path,
            lines: 0,
        };
        f.rewrite(std::iter::empty())?;
        Ok((f, killed))
    }

    /// Records a started group before anything else can happen to the agent.
    pub fn add(&mut self, pgid: i32) -> std::io::Result<()> {
        writeln!(self.file, "{pgid}")?;
        self.lines += 1;
        Ok(())
    }

    /// Drops ended groups from the file once it has grown well past the live set.
    pub fn compact(&mut self, live: impl ExactSizeIterator<Item = i32>) -> std::io::Result<()> {
        if self.lines > 2 * live.len() + 64 {
            self.rewrite(live)?;
        }
        Ok(())
    }

    fn rewrite(&mut self, live: impl Iterator<Item = i32>) -> std::io::Result<()> {
        let mut text = boot_id();
        text.push('\n');
        let mut n = 0;
        for p in live {
            text.push_str(&format!("{p}\n"));
            n += 1;
        }
        crate::sandbox::write_private(&self.path, text.as_bytes())?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;
    use crate::runner::group_alive;

    #[test]
    fn a_new_agent_kills_the_groups_its_predecessor_left_in_this_boot_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut leftover = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = leftover.id() as i32;
        let (mut f, killed) = PgidFile::open(tmp.path()).unwrap();
        assert_eq!(killed, 0);
        f.add(pgid).unwrap();
        drop(f);

        // Another boot's list names nothing of this one.
        let path = tmp.path().join("pgids");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen(&boot_id(), "another-boot", 1)).unwrap();
        let (f, killed) = PgidFile::open(tmp.path()).unwrap();
        assert_eq!(killed, 0);
        assert!(group_alive(pgid));
        drop(f);

        std::fs::write(&path, format!("{}\n{pgid}\n", boot_id())).unwrap();
        let (_f, killed) = PgidFile::open(tmp.path()).unwrap();
        assert_eq!(killed, 1);
        let status = leftover.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // The list starts afresh.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", boot_id())
        );
    }

    #[test]
    fn the_list_is_compacted_to_the_live_groups() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut f, _) = PgidFile::open(tmp.path()).unwrap();
        for p in 0..100 {
            f.add(100_000 + p).unwrap();
        }
        f.compact([4242, 4343].into_iter()).unwrap();
        let text = std::fs::read_to_string(tmp.path().join("pgids")).unwrap();
        assert_eq!(text, format!("{}\n4242\n4343\n", boot_id()));
        f.add(4444).unwrap();
        let text = std::fs::read_to_string(tmp.path().join("pgids")).unwrap();
        assert!(text.ends_with("4343\n4444\n"));
    }
}
