//! One Philly VC imported with `gosok trace import philly`, for tests that replay or plan on it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared traces (`../shared/traces` beside the repository).
pub fn traces() -> PathBuf {
    let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces");
    assert!(
        t.join("philly-pollux/philly.csv").is_file(),
        "the shared traces are expected at {}",
        t.display()
    );
    t
}

/// VC 2869ce alone (16 nodes × 8 GPUs, 315 jobs in October–November 2017), imported into
/// `dir/trace` with `extra` flags (e.g. an arrival compression); returns that directory.
pub fn import_vc_2869ce(dir: &Path, extra: &[&str]) -> PathBuf {
    let t = traces().join("philly-pollux");
    let vcs = dir.join("vc.csv");
    std::fs::write(&vcs, "vc,node num\n2869ce,16\n").unwrap();
    let out = dir.join("trace");
    let o = Command::new(env!("CARGO_BIN_EXE_gosok"))
        .args(["trace", "import", "philly", "--jobs"])
        .arg(t.join("philly.csv"))
        .arg("--vcs")
        .arg(&vcs)
        .args(["--from", "2017-10-01", "--to", "2017-12-01", "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trace import failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}
