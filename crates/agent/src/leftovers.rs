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

pub struct PgidFile {
    path: PathBuf,
    file: File,
    /// Lines in the file, to know when to rewrite it.
    lines: usize,
}

impl PgidFile {
    /// Kills the groups listed by a previous agent on `work_dir` (same boot only), then starts
    /// a fresh list. Returns the file and how many groups still had processes.
    pub fn open(work_dir: &Path) -> anyhow::Result<(PgidFile, usize)> {
        let path = work_dir.join("pgids");
        let mut killed = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
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
        let mut f = PgidFile {
            file: File::create(&path)?,
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
        let tmp = self.path.with_extension("tmp");
        let mut text = boot_id();
        text.push('\n');
        let mut n = 0;
        for p in live {
            text.push_str(&format!("{p}\n"));
            n += 1;
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = n;
        Ok(())
    }
}
