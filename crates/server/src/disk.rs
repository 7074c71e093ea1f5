//! The disk watermark: below a free-space threshold on the data directory's file system the
//! controller refuses new submissions (507), so that tenant traffic never fills the disk;
//! scheduling, agent reports, cancels and reads go on (they write little, and must).
//!
//! The free space is read with `statvfs(3)` at most once a second; between readings every
//! check is an atomic load.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the free space is read at most.
const REFRESH: Duration = Duration::from_secs(1);

/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// Reads the free space (for unprivileged users) of the file system holding `path`.
pub fn space(path: &std::path::Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = if st.f_frsize > 0 {
        st.f_frsize as u64
    } else {
        st.f_bsize as u64
    };
    Ok(Space {
        free_bytes: (st.f_bavail as u64).saturating_mul(frsize),
        total_bytes: (st.f_blocks as u64).saturating_mul(frsize),
    })
}

pub struct DiskWatch {
    dir: PathBuf,
    min_free_bytes: u64,
    min_free_fraction: f64,
    last: Mutex<Option<Instant>>,
    free_bytes: AtomicU64,
    total_bytes: AtomicU64,
    low: AtomicBool,
    /// Submissions refused for want of disk space.
    pub refused: AtomicU64,
}

impl DiskWatch {
    pub fn new(dir: PathBuf, min_free_mib: u64, min_free_fraction: f64) -> DiskWatch {
        let w = DiskWatch {
            dir,
            min_free_bytes: min_free_mib.saturating_mul(1 << 20),
            min_free_fraction,
            last: Mutex::new(None),
            free_bytes: AtomicU64::new(u64::MAX),
            total_bytes: AtomicU64::new(0),
            low: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        };
        w.refresh(true);
        w
    }

    /// The threshold in bytes for a file system of `total` bytes.
    pub fn threshold(&self, total: u64) -> u64 {
        self.min_free_bytes
            .max((total as f64 * self.min_free_fraction) as u64)
    }

    fn refresh(&self, force: bool) {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < REFRESH) {
                return;
            }
            *last = Some(Instant::now());
        }
        match space(&self.dir) {
            Ok(s) => {
                self.free_bytes.store(s.free_bytes, Ordering::Relaxed);
                self.total_bytes.store(s.total_bytes, Ordering::Relaxed);
                let low = s.free_bytes < self.threshold(s.total_bytes);
                if low != self.low.swap(low, Ordering::Relaxed) {
                    if low {
                        tracing::warn!(
                            free_bytes = s.free_bytes,
                            "free disk space is below the watermark: new submissions are refused"
                        );
                    } else {
                        tracing::info!(
                            free_bytes = s.free_bytes,
                            "free disk space is above the watermark again"
                        );
                    }
                }
            }
            // Cannot tell: keep the last reading (a transient error should not stop work).
            Err(e) => tracing::warn!("cannot read the free disk space: {e}"),
        }
    }

    /// The current reading (at most a second old) and whether it is below the watermark.
    pub fn status(&self) -> (Space, bool) {
        self.refresh(false);
        (
            Space {
                free_bytes: self.free_bytes.load(Ordering::Relaxed),
                total_bytes: self.total_bytes.load(Ordering::Relaxed),
            },
            self.low.load(Ordering::Relaxed),
        )
    }

    /// Ok while there is room; else the free and threshold bytes.
    pub fn check(&self) -> Result<(), (u64, u64)> {
        let (s, low) = self.status();
        if low {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err((s.free_bytes, self.threshold(s.total_bytes)))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let d = tempfile::tempdir().unwrap();
        let s = space(d.path()).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
        assert!(space(std::path::Path::new("/nonexistent/x")).is_err());
        // A threshold above the whole file system is always low; 0 never is.
        let huge = DiskWatch::new(d.path().into(), s.total_bytes / (1 << 20) + 1, 0.0);
        assert!(huge.check().is_err());
        assert_eq!(huge.refused.load(Ordering::Relaxed), 1);
        let none = DiskWatch::new(d.path().into(), 0, 0.0);
        assert!(none.check().is_ok());
    }
}
