//! The runner against real processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gosok_agent::runner::{Outcome, Poll, Running, Spec, StopCause, become_subreaper, group_alive};
use gosok_model::agent::EndReason;

fn spec(dir: &Path, script: &str) -> Spec {
    // As the agent does: orphans of tasks come back to this process and are reaped at once.
    become_subreaper();
    Spec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        user: "gosok-lab".into(),
        workdir: None,
        log_dir: dir.join("7/1/0"),
        run_dir: dir.join("run/7-1-0"),
        limit: None,
        grace: Duration::from_secs(5),
        sandbox: None,
    }
}

/// Polls until the task ends; panics after `within`.
fn wait(r: &mut Running, within: Duration) -> Option<Outcome> {
    let until = Instant::now() + within;
    loop {
        if let Poll::Ended(o) = r.poll(Instant::now()) {
            return o;
        }
        assert!(
            Instant::now() < until,
            "the task did not end within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn env_and_workdir_reach_the_process_and_logs_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("wd");
    std::fs::create_dir(&wd).unwrap();
    let mut s = spec(
        tmp.path(),
        "echo \"$GOSOK_JOB_ID $RANK\"; pwd; echo oops >&2; exit 3",
    );
    s.env.insert("GOSOK_JOB_ID".into(), "7".into());
    s.env.insert("RANK".into(), "0".into());
    s.workdir = Some(wd.clone());
    let mut r = Running::spawn(s).unwrap();
    let o = wait(&mut r, Duration::from_secs(5)).unwrap();
    assert_eq!(o.reason, EndReason::Exited);
    assert_eq!((o.exit_code, o.signal), (Some(3), None));
    let out = read(tmp.path().join("7/1/0/stdout.log"));
    assert_eq!(
        out,
        format!("7 0\n{}\n", wd.canonicalize().unwrap().display())
    );
    assert_eq!(read(tmp.path().join("7/1/0/stderr.log")), "oops\n");
    // Nothing of the agent's own environment reaches the task: only a minimal PATH, HOME,
    // USER and LOGNAME beside the task's own; the scratch directory is the default working
    // directory and is removed when the task ends.
    // SAFETY: tests in this binary read no environment variable concurrently.
    unsafe { std::env::set_var("GOSOK_AGENT_SECRET_FOR_TEST", "x") };
    let mut s = spec(tmp.path(), "env | sort; pwd");
    s.log_dir = tmp.path().join("7/1/1");
    s.run_dir = tmp.path().join("run/7-1-1");
    s.env.insert("SEED".into(), "7".into());
    let mut r = Running::spawn(s).unwrap();
    assert_eq!(
        wait(&mut r, Duration::from_secs(5)).unwrap().exit_code,
        Some(0)
    );
    let run_dir = tmp.path().join("run/7-1-1");
    let out = read(tmp.path().join("7/1/1/stdout.log"));
    let vars: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once('=').map(|x| x.0))
        // What the shell itself sets.
        .filter(|v| !matches!(*v, "PWD" | "SHLVL" | "OLDPWD" | "_"))
        .collect();
    assert_eq!(vars, ["HOME", "LOGNAME", "PATH", "SEED", "USER"], "{out}");
    assert!(
        out.contains(&format!("HOME={}\n", run_dir.display())),
        "{out}"
    );
    assert!(out.ends_with(&format!("{}\n", run_dir.display())), "{out}");
    assert!(!run_dir.exists(), "the scratch directory outlived its task");
}

#[test]
fn a_terminating_signal_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = Running::spawn(spec(tmp.path(), "kill -9 $$")).unwrap();
    let o = wait(&mut r, Duration::from_secs(5)).unwrap();
    assert_eq!(o.reason, EndReason::Exited);
    assert_eq!((o.exit_code, o.signal), (None, Some(9)));
}

#[test]
fn the_runtime_limit_stops_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec(tmp.path(), "sleep 100");
    s.limit = Some(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut r = Running::spawn(s).unwrap();
    let o = wait(&mut r, Duration::from_secs(5)).unwrap();
    assert_eq!(o.reason, EndReason::Limit);
    assert_eq!(o.signal, Some(libc::SIGTERM));
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(!group_alive(r.pgid()));
}

#[test]
fn a_stop_leaves_no_process_of_the_group_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // Children that ignore SIGTERM, and a leader that exits on it: the group must still be
    // SIGKILLed at the end of the grace period.
    let mut s = spec(
        tmp.path(),
        "trap '' TERM; sleep 1000 & sleep 1000 & (trap '' TERM; sleep 1000) & \
         trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    s.grace = Duration::from_millis(400);
    let mut r = Running::spawn(s).unwrap();
    let out = tmp.path().join("7/1/0/stdout.log");
    let until = Instant::now() + Duration::from_secs(5);
    while read(&out).is_empty() {
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(10));
    }
    let pgid = r.pgid();
    assert!(group_alive(pgid));
    let t0 = Instant::now();
    r.stop(StopCause::Killed, t0);
    // Killed tasks are not reported.
    assert_eq!(wait(&mut r, Duration::from_secs(5)), None);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "the grace period was cut short"
    );
    // kill(-pgid, 0) answers ESRCH: nothing of the group is left.
    let rc = unsafe { libc::kill(-pgid, 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ESRCH)
    );
}

#[test]
fn what_a_task_leaves_behind_when_it_exits_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = Running::spawn(spec(tmp.path(), "sleep 1000 & exit 0")).unwrap();
    let o = wait(&mut r, Duration::from_secs(5)).unwrap();
    assert_eq!(o.exit_code, Some(0));
    assert!(
        !group_alive(r.pgid()),
        "a background child outlived its task"
    );
}

#[test]
fn a_command_that_cannot_start_is_a_spawn_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec(tmp.path(), "");
    s.command = vec!["/nonexistent/gosok-no-such-program".into()];
    let e = Running::spawn(s).unwrap_err();
    assert!(e.contains("gosok-no-such-program"), "{e}");
    let mut s = spec(tmp.path(), "");
    s.command = vec![];
    assert!(Running::spawn(s).unwrap_err().contains("empty"));
    let mut s = spec(tmp.path(), "");
    s.command = vec!["true".into()];
    s.workdir = Some(tmp.path().join("missing"));
    let e = Running::spawn(s).unwrap_err();
    assert!(e.contains("working directory"), "{e}");
}
