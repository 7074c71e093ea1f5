//! The task sandbox: each task runs as its tenant's unprivileged Unix account, in a control
//! group of its own (memory, pids and CPU limits; killed as a whole), in a mount namespace
//! with a private `/tmp` and the agent's files hidden, in a scratch directory only its tenant
//! can enter. What Slurm gets from running jobs as the user in per-job cgroups, and Kubernetes
//! from pod cgroups and namespaces (`docs/AGENTS.md`, Isolation).
//!
//! Everything that allocates happens in the agent before the fork ([`Sandbox::prepare`]); the
//! child between fork and exec ([`Prepared::enter`]) makes only system calls on prepared
//! C strings, as async-signal-safety requires.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How tasks are isolated on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Per-tenant accounts, control groups, mount namespaces (needs root and cgroups).
    Sandbox,
    /// Tasks run as the agent's own user with no limits: only when the operator says so.
    None,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Sandbox => "sandbox",
            Isolation::None => "none",
        }
    }
}

/// The node label that tells the controller (and tenants) how a node isolates tasks.
pub const ISOLATION_LABEL: &str = "gosok.io/isolation";

/// What the operator chooses for the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Tenants' accounts are the uids (and gids) `uid_first .. uid_first + uid_count`.
    pub uid_first: u32,
    pub uid_count: u32,
    /// The machine-wide tenant → uid map, shared (under a file lock) by every agent of the
    /// machine so that two tenants never get the same account.
    pub uid_map: PathBuf,
    /// Most processes (and threads) one task may have.
    pub pids_max: u64,
    /// Directories no task may see (the agent's work directory is always hidden).
    pub hide: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        SandboxConfig {
            uid_first: 200_000,
            uid_count: 65_536,
            uid_map: PathBuf::from("/var/lib/gosok/tenant-uids"),
            pids_max: 4096,
            hide: Vec::new(),
        }
    }
}

/// A control-group controller the sandbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    Memory,
    Pids,
    Cpu,
    Freezer,
}

impl Ctl {
    fn name(self) -> &'static str {
        match self {
            Ctl::Memory => "memory",
            Ctl::Pids => "pids",
            Ctl::Cpu => "cpu",
            Ctl::Freezer => "freezer",
        }
    }
}

/// Where the agent's tasks' control groups live.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// One unified directory (cgroup v2): the agent's parent group.
    V2 { parent: PathBuf },
    /// One parent directory per controller (cgroup v1).
    V1 { parents: Vec<(Ctl, PathBuf)> },
}

/// A task's control group (one directory, or one per v1 controller).
#[derive(Debug)]
pub struct TaskCgroup {
    v2: bool,
    /// (controller, directory); for v2 a single entry.
    dirs: Vec<(Ctl, PathBuf)>,
}

/// A task's sandbox, made by the agent before the task starts.
#[derive(Debug)]
pub struct Prepared {
    pub uid: u32,
    pub user: String,
    /// The task's scratch directory (its working directory unless the job names one).
    pub run_dir: PathBuf,
    pub cgroup: TaskCgroup,
    /// What the child does between fork and exec.
    pub entry: Entry,
}

/// The descriptor number the child keeps its run directory open under while it covers the
/// paths above it (a mount made in the agent's namespace cannot be bound in the task's).
const STAGE_FD: i32 = 1021;

/// Everything the child needs between fork and exec, prepared by the agent.
#[derive(Debug)]
pub struct Entry {
    uid: u32,
    /// Where the task gets a fresh tmpfs of its own (`/tmp`, `/dev/shm`).
    private: Vec<CString>,
    procs: Vec<CString>,
    mount_ns: bool,
    hide: Vec<CString>,
    /// With the run directory under a hidden one (or under /tmp or /dev/shm, which the task
    /// gets private ones of): the directories to make again inside the cover, the last the run
    /// directory's path, where it is bound back (through a descriptor opened before the
    /// cover, [`STAGE_FD`]).
    rebind: Option<Vec<CString>>,
    run_dir: CString,
    workdir: Option<CString>,
}

/// The agent's sandbox: the control-group hierarchy, the tenants' accounts and what to hide.
#[derive(Debug)]
pub struct Sandbox {
    cfg: SandboxConfig,
    hierarchy: Hierarchy,
    mount_ns: bool,
    hide: Vec<PathBuf>,
    /// `/tmp` and `/dev/shm` (where the machine has it): each task gets fresh ones.
    private: Vec<PathBuf>,
    run_root: PathBuf,
    uids: std::collections::HashMap<String, u32>,
    next_group: u64,
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("the path {} contains a NUL byte", p.display()))
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn read_file(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

/// 64-bit FNV-1a: a stable name for the agent's control group from its work directory, so
/// that the next agent on the same directory finds (and kills) what this one left.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The cgroup mounts of this process: (fstype, mount root, mount point, super options).
fn cgroup_mounts() -> Vec<(String, String, PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 || !r[0].starts_with("cgroup") {
            continue;
        }
        out.push((
            r[0].to_string(),
            unescape(l[3]),
            PathBuf::from(unescape(l[4])),
            r[2].to_string(),
        ));
    }
    out
}

/// mountinfo escapes spaces and the like as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's group per hierarchy: (controllers, path) from /proc/self/cgroup.
fn own_groups() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctls = it.next()?;
            let path = it.next()?;
            Some((
                ctls.split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// `mount point + (own path relative to the mount's root)`.
fn own_dir(mount_root: &str, mount_point: &Path, own: &str) -> PathBuf {
    let rel = own.strip_prefix(mount_root).unwrap_or(own);
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(rel)
    }
}

fn mkdir(p: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(p) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Finds the hierarchy with memory and pids: cgroup v2 when it has them, else v1.
fn detect(name: &str) -> Result<Hierarchy, String> {
    let mounts = cgroup_mounts();
    let own = own_groups();
    // cgroup v2, where its controllers are enabled for us.
    if let Some((_, root, point, _)) = mounts.iter().find(|m| m.0 == "cgroup2") {
        let path = own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map_or("/", |(_, p)| p.as_str());
        let mine = own_dir(root, point, path);
        let controllers = read_file(&mine.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return v2_parent(&mine, name, has("cpu")).map(|parent| Hierarchy::V2 { parent });
        }
    }
    let mut parents = Vec::new();
    for ctl in [Ctl::Memory, Ctl::Pids, Ctl::Cpu, Ctl::Freezer] {
        let Some((_, root, point, _)) = mounts
            .iter()
            .find(|m| m.0 == "cgroup" && m.3.split(',').any(|o| o == ctl.name()))
        else {
            if matches!(ctl, Ctl::Memory | Ctl::Pids) {
                return Err(format!(
                    "no {} control group controller is mounted (cgroup v2 with memory and pids, or the v1 memory and pids hierarchies, are needed)",
                    ctl.name()
                ));
            }
            continue;
        };
        let path = own
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == ctl.name()))
            .map_or("/", |(_, p)| p.as_str());
        let parent = own_dir(root, point, path).join(name);
        mkdir(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        parents.push((ctl, parent));
    }
    Ok(Hierarchy::V1 { parents })
}

/// In v2 a group with processes cannot hand controllers to its children ("no internal
/// processes"): when the agent's own group refuses, the agent moves itself into a leaf first.
fn v2_parent(mine: &Path, name: &str, cpu: bool) -> Result<PathBuf, String> {
    let enable = if cpu {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    };
    let control = mine.join("cgroup.subtree_control");
    if write_file(&control, enable).is_err() {
        let leaf = mine.join("gosok-agent-self");
        mkdir(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
        let procs = read_file(&mine.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = write_file(&leaf.join("cgroup.procs"), pid);
        }
        write_file(&control, enable)
            .map_err(|e| format!("cannot enable {enable} in {}: {e}", control.display()))?;
    }
    let parent = mine.join(name);
    mkdir(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    write_file(&parent.join("cgroup.subtree_control"), enable).map_err(|e| {
        format!(
            "cannot enable {enable} in {}: {e}",
            parent.join("cgroup.subtree_control").display()
        )
    })?;
    Ok(parent)
}

/// Whether this process may make a mount namespace (tried in a child that exits at once).
fn mount_ns_works() -> bool {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "exit 0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: unshare and mount are system calls on static strings.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().is_ok_and(|s| s.success())
}

/// The file `WORK/cgroups` lists the agent's parent groups, for the watchdog and the next
/// agent on the same work directory.
pub fn cgroups_file(work_dir: &Path) -> PathBuf {
    work_dir.join("cgroups")
}

impl Sandbox {
    /// Sets the sandbox up, or says why it cannot be had (the agent then refuses to start
    /// unless told `--isolation none`).
    pub fn new(cfg: SandboxConfig, work_dir: &Path) -> Result<Sandbox, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the agent does not run as root: it cannot run tasks as their tenants' accounts or give them control groups".into());
        }
        if cfg.uid_count == 0
            || cfg.uid_first == 0
            || cfg.uid_first.checked_add(cfg.uid_count).is_none()
        {
            return Err(format!(
                "the uid range {}+{} is empty, starts at root, or overflows",
                cfg.uid_first, cfg.uid_count
            ));
        }
        let name = format!(
            "gosok-agent-{:016x}",
            fnv1a(work_dir.as_os_str().as_bytes())
        );
        let hierarchy = detect(&name)?;
        let parents: Vec<(&str, &Path)> = match &hierarchy {
            Hierarchy::V2 { parent } => vec![("unified", parent.as_path())],
            Hierarchy::V1 { parents } => parents
                .iter()
                .map(|(c, p)| (c.name(), p.as_path()))
                .collect(),
        };
        let mut text = String::new();
        for (c, p) in &parents {
            text.push_str(&format!("{c} {}\n", p.display()));
        }
        write_private(&cgroups_file(work_dir), text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", cgroups_file(work_dir).display()))?;
        let mount_ns = mount_ns_works();
        if !mount_ns {
            tracing::warn!(
                "mount namespaces are not available: tasks share /tmp and could see paths their permissions allow"
            );
        }
        // Hidden: the agent's work directory and what the operator names; a directory inside
        // another hidden one is covered with it.
        let mut hide: Vec<PathBuf> = std::iter::once(work_dir.to_path_buf())
            .chain(cfg.hide.iter().filter_map(|p| p.canonicalize().ok()))
            .filter(|p| p.is_dir())
            .collect();
        hide.sort();
        hide.dedup();
        let hide: Vec<PathBuf> = hide
            .iter()
            .filter(|p| !hide.iter().any(|q| q != *p && p.starts_with(q)))
            .cloned()
            .collect();
        let run_root = work_dir.join("run");
        mkdir(&run_root).map_err(|e| format!("cannot create {}: {e}", run_root.display()))?;
        // Tasks must pass through to their own directory, never list the others.
        for d in [work_dir, run_root.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("cannot set the mode of {}: {e}", d.display()))?;
        }
        if let Some(dir) = cfg.uid_map.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let private = ["/tmp", "/dev/shm"]
            .iter()
            .filter_map(|p| Path::new(p).canonicalize().ok())
            .filter(|p| p.is_dir())
            .collect();
        Ok(Sandbox {
            cfg,
            hierarchy,
            mount_ns,
            hide,
            private,
            run_root,
            uids: std::collections::HashMap::new(),
            next_group: 0,
        })
    }

    pub fn mount_ns(&self) -> bool {
        self.mount_ns
    }

    /// The tenant's uid (and gid): from the machine-wide map, or the next free one in the
    /// range, recorded there under an exclusive lock.
    pub fn uid_of(&mut self, tenant: &str) -> Result<u32, String> {
        if let Some(&u) = self.uids.get(tenant) {
            return Ok(u);
        }
        if tenant.is_empty() || tenant.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("the tenant name {tenant:?} cannot name an account"));
        }
        let path = &self.cfg.uid_map;
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (first, end) = (self.cfg.uid_first, self.cfg.uid_first + self.cfg.uid_count);
        let mut used = std::collections::HashSet::new();
        for line in text.lines() {
            let Some((t, u)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(u) = u.parse::<u32>() else { continue };
            used.insert(u);
            if (first..end).contains(&u) {
                self.uids.insert(t.to_string(), u);
            }
        }
        if let Some(&u) = self.uids.get(tenant) {
            return Ok(u);
        }
        let Some(u) = (first..end).find(|u| !used.contains(u)) else {
            return Err(format!(
                "every uid of {first}..{end} is taken ({}): widen --uid-range",
                path.display()
            ));
        };
        f.write_all(format!("{tenant} {u}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.uids.insert(tenant.to_string(), u);
        Ok(u)
    }

    /// Makes the task's account, control group and scratch directory; nothing is started.
    pub fn prepare(
        &mut self,
        task: &str,
        tenant: &str,
        mem_mib: u64,
        cpu_milli: u64,
        workdir: Option<&Path>,
    ) -> Result<Prepared, String> {
        let uid = self.uid_of(tenant)?;
        self.next_group += 1;
        let group = format!("{task}-{}", self.next_group);
        let cgroup = self.make_group(&group, mem_mib, cpu_milli)?;
        let run_dir = self.run_root.join(task);
        let result = (|| {
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir)
                    .map_err(|e| format!("cannot clear {}: {e}", run_dir.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&run_dir)
                .map_err(|e| format!("cannot create {}: {e}", run_dir.display()))?;
            std::os::unix::fs::chown(&run_dir, Some(uid), Some(uid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", run_dir.display()))?;
            let procs = cgroup
                .dirs
                .iter()
                .map(|(_, d)| c_path(&d.join("cgroup.procs")))
                .collect::<Result<Vec<_>, _>>()?;
            // Hidden paths under /tmp or /dev/shm are gone with the task's private ones.
            let hide = self
                .hide
                .iter()
                .filter(|p| !self.private.iter().any(|q| p.starts_with(q)))
                .map(|p| c_path(p))
                .collect::<Result<Vec<_>, _>>()?;
            let cover = self
                .private
                .iter()
                .chain(self.hide.iter())
                .map(PathBuf::as_path)
                .find(|h| run_dir.starts_with(h));
            let rebind = match cover {
                Some(h) if self.mount_ns => {
                    let mut chain = Vec::new();
                    let mut p = h.to_path_buf();
                    for part in run_dir
                        .strip_prefix(h)
                        .unwrap_or(Path::new(""))
                        .components()
                    {
                        p.push(part);
                        chain.push(c_path(&p)?);
                    }
                    Some(chain)
                }
                _ => None,
            };
            Ok(Entry {
                uid,
                private: self
                    .private
                    .iter()
                    .map(|p| c_path(p))
                    .collect::<Result<Vec<_>, _>>()?,
                procs,
                mount_ns: self.mount_ns,
                hide,
                rebind,
                run_dir: c_path(&run_dir)?,
                workdir: workdir.map(c_path).transpose()?,
            })
        })();
        match result {
            Ok(entry) => Ok(Prepared {
                uid,
                user: format!("gosok-{tenant}"),
                run_dir,
                cgroup,
                entry,
            }),
            Err(e) => {
                cgroup.remove();
                Err(e)
            }
        }
    }

    fn make_group(&self, name: &str, mem_mib: u64, cpu_milli: u64) -> Result<TaskCgroup, String> {
        let set = |dir: &Path, file: &str, value: String| {
            write_file(&dir.join(file), &value)
                .map_err(|e| format!("cannot set {} to {value}: {e}", dir.join(file).display()))
        };
        let mem_bytes = mem_mib.saturating_mul(1 << 20);
        match &self.hierarchy {
            Hierarchy::V2 { parent } => {
                let dir = parent.join(name);
                mkdir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let g = TaskCgroup {
                    v2: true,
                    dirs: vec![(Ctl::Memory, dir.clone())],
                };
                let r = (|| {
                    if mem_mib > 0 {
                        set(&dir, "memory.max", mem_bytes.to_string())?;
                        if dir.join("memory.swap.max").exists() {
                            set(&dir, "memory.swap.max", "0".into())?;
                        }
                        // The whole task goes on OOM, as a pod's container does.
                        let _ = set(&dir, "memory.oom.group", "1".into());
                    }
                    set(&dir, "pids.max", self.cfg.pids_max.to_string())?;
                    if dir.join("cpu.weight").exists() {
                        // The Kubernetes mapping of shares (1024 per core) to weights.
                        let shares = (cpu_milli * 1024 / 1000).clamp(2, 262_144);
                        let weight = 1 + ((shares - 2) * 9999) / 262_142;
                        set(&dir, "cpu.weight", weight.to_string())?;
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => Ok(g),
                    Err(e) => {
                        g.remove();
                        Err(e)
                    }
                }
            }
            Hierarchy::V1 { parents } => {
                let mut g = TaskCgroup {
                    v2: false,
                    dirs: Vec::new(),
                };
                for (ctl, parent) in parents {
                    let dir = parent.join(name);
                    if let Err(e) = mkdir(&dir) {
                        g.remove();
                        return Err(format!("cannot create {}: {e}", dir.display()));
                    }
                    g.dirs.push((*ctl, dir));
                }
                let r = (|| {
                    for (ctl, dir) in &g.dirs {
                        match ctl {
                            Ctl::Memory if mem_mib > 0 => {
                                set(dir, "memory.limit_in_bytes", mem_bytes.to_string())?;
                                if dir.join("memory.memsw.limit_in_bytes").exists() {
                                    set(dir, "memory.memsw.limit_in_bytes", mem_bytes.to_string())?;
                                }
                            }
                            Ctl::Pids => set(dir, "pids.max", self.cfg.pids_max.to_string())?,
                            Ctl::Cpu => {
                                let shares = (cpu_milli * 1024 / 1000).max(2);
                                set(dir, "cpu.shares", shares.to_string())?;
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => Ok(g),
                    Err(e) => {
                        g.remove();
                        Err(e)
                    }
                }
            }
        }
    }
}

impl Entry {
    /// Runs in the child between fork and exec: joins the control group, hides the agent's
    /// files, becomes the tenant's account, enters the working directory, and arms the
    /// parent-death signal (a change of credentials clears it, so it comes last).
    ///
    /// # Safety
    /// Only async-signal-safe system calls on data prepared before the fork.
    pub unsafe fn enter(&self, agent_pid: i32) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY (for the whole body): system calls on NUL-terminated strings that live as
        // long as `self`, and on plain integers.
        unsafe {
            for p in &self.procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(err());
                }
                let ok = libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
                let e = err();
                libc::close(fd);
                if !ok {
                    return Err(e);
                }
            }
            if self.mount_ns {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(err());
                }
                let none = std::ptr::null();
                if libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    none.cast(),
                ) != 0
                {
                    return Err(err());
                }
                if self.rebind.is_some() {
                    let fd = libc::open(
                        self.run_dir.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    );
                    if fd < 0 {
                        return Err(err());
                    }
                    if fd != STAGE_FD {
                        if libc::dup3(fd, STAGE_FD, libc::O_CLOEXEC) < 0 {
                            return Err(err());
                        }
                        libc::close(fd);
                    }
                }
                let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
                for p in &self.private {
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        p.as_ptr(),
                        c"tmpfs".as_ptr(),
                        nosuid,
                        c"mode=1777".as_ptr().cast(),
                    ) != 0
                    {
                        return Err(err());
                    }
                }
                for h in &self.hide {
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        h.as_ptr(),
                        c"tmpfs".as_ptr(),
                        nosuid | libc::MS_NOEXEC,
                        c"mode=0755,size=1m".as_ptr().cast(),
                    ) != 0
                    {
                        return Err(err());
                    }
                }
                if let Some(chain) = &self.rebind {
                    for d in chain {
                        if libc::mkdir(d.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(err());
                        }
                    }
                    if libc::mount(
                        c"/proc/self/fd/1021".as_ptr(),
                        self.run_dir.as_ptr(),
                        none,
                        libc::MS_BIND,
                        none.cast(),
                    ) != 0
                    {
                        return Err(err());
                    }
                    libc::close(STAGE_FD);
                }
            }
            let gid = self.uid as libc::gid_t;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(self.uid as libc::uid_t) != 0
            {
                return Err(err());
            }
            // As the tenant: a directory the tenant may not enter stays closed.
            let dir = self.workdir.as_ref().unwrap_or(&self.run_dir);
            if libc::chdir(dir.as_ptr()) != 0 {
                return Err(err());
            }
            // No setuid program gives the task back what it just gave up.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(err());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(err());
            }
            if libc::getppid() != agent_pid {
                libc::_exit(137);
            }
        }
        Ok(())
    }
}

impl TaskCgroup {
    fn procs_dir(&self) -> Option<&Path> {
        // Every directory holds the same processes; freezer's is the one kills go through.
        self.dirs
            .iter()
            .find(|(c, _)| *c == Ctl::Freezer)
            .or_else(|| self.dirs.first())
            .map(|(_, d)| d.as_path())
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.procs_dir() else {
            return Vec::new();
        };
        read_file(&d.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Sends `sig` to every process of the group.
    pub fn signal(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// SIGKILL to every process of the group, with none able to fork away meanwhile: v2's
    /// `cgroup.kill`, else freeze, kill, thaw; without a freezer, kill until none is left.
    pub fn kill(&self) {
        kill_group_dir(self.v2, self.dirs.iter().map(|(c, d)| (*c, d.as_path())));
    }

    /// How many times the kernel's OOM killer fired in the group.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        self.dirs
            .iter()
            .find(|(c, _)| *c == Ctl::Memory)
            .and_then(|(_, d)| read_file(&d.join(file)).ok())
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Removes the group's directories (they must be empty); false if one is left.
    pub fn remove(&self) -> bool {
        let mut ok = true;
        for (_, d) in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                ok = false;
            }
        }
        ok
    }
}

/// Kills every process of one task group given as (controller, directory) pairs.
fn kill_group_dir<'a>(v2: bool, dirs: impl Iterator<Item = (Ctl, &'a Path)> + Clone) {
    let first = dirs.clone().next().map(|(_, d)| d);
    let Some(first) = first else { return };
    let read = |d: &Path| -> Vec<i32> {
        read_file(&d.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let kill_all = |pids: &[i32]| {
        for &pid in pids {
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    };
    if v2 {
        if write_file(&first.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        if write_file(&first.join("cgroup.freeze"), "1").is_ok() {
            kill_all(&read(first));
            let _ = write_file(&first.join("cgroup.freeze"), "0");
            return;
        }
    } else if let Some((_, freezer)) = dirs.clone().find(|(c, _)| *c == Ctl::Freezer)
        && write_file(&freezer.join("freezer.state"), "FROZEN").is_ok()
    {
        let until = Instant::now() + Duration::from_millis(500);
        while read_file(&freezer.join("freezer.state")).is_ok_and(|s| s.trim() == "FREEZING")
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        kill_all(&read(freezer));
        let _ = write_file(&freezer.join("freezer.state"), "THAWED");
        return;
    }
    // No freezer: a fork bomb may outrun one pass; the pids limit bounds how many there are.
    for _ in 0..100 {
        let pids = read(first);
        if pids.is_empty() {
            return;
        }
        kill_all(&pids);
    }
}

/// Kills every task group under the parent groups listed in `WORK/cgroups` (the watchdog,
/// and an agent starting on a work directory a dead one left); returns how many groups had
/// processes. With `remove`, empty groups are removed too.
pub fn kill_all_listed(work_dir: &Path, remove: bool) -> usize {
    let Ok(text) = std::fs::read_to_string(cgroups_file(work_dir)) else {
        return 0;
    };
    let mut v2 = false;
    // Task groups by name, across the v1 controllers.
    let mut groups: std::collections::BTreeMap<std::ffi::OsString, Vec<(Ctl, PathBuf)>> =
        Default::default();
    for line in text.lines() {
        let Some((name, parent)) = line.split_once(' ') else {
            continue;
        };
        let parent = Path::new(parent);
        let ctl = match name {
            "unified" => {
                v2 = true;
                Ctl::Memory
            }
            "pids" => Ctl::Pids,
            "cpu" => Ctl::Cpu,
            "freezer" => Ctl::Freezer,
            _ => Ctl::Memory,
        };
        let Ok(rd) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                groups
                    .entry(e.file_name())
                    .or_default()
                    .push((ctl, e.path()));
            }
        }
    }
    let mut killed = 0;
    for dirs in groups.values() {
        let busy = dirs
            .iter()
            .any(|(_, d)| read_file(&d.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty()));
        if busy {
            killed += 1;
            kill_group_dir(v2, dirs.iter().map(|(c, d)| (*c, d.as_path())));
        }
        if remove {
            let until = Instant::now() + Duration::from_secs(2);
            for (_, d) in dirs {
                while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    killed
}

/// Writes a file only root can read (mode 0600), replacing it.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped_and_joined() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(
            own_dir("/", Path::new("/sys/fs/cgroup/memory"), "/x/y"),
            PathBuf::from("/sys/fs/cgroup/memory/x/y")
        );
        assert_eq!(
            own_dir("/x", Path::new("/sys/fs/cgroup/memory"), "/x/y"),
            PathBuf::from("/sys/fs/cgroup/memory/y")
        );
        assert_eq!(
            own_dir("/", Path::new("/sys/fs/cgroup"), "/"),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_ne!(fnv1a(b"/a"), fnv1a(b"/b"));
    }

    #[test]
    fn tenants_get_distinct_uids_that_every_agent_of_the_machine_shares() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = SandboxConfig {
            uid_map: tmp.path().join("uids"),
            uid_first: 300_000,
            uid_count: 2,
            ..SandboxConfig::default()
        };
        let mk = || Sandbox {
            cfg: cfg.clone(),
            hierarchy: Hierarchy::V1 { parents: vec![] },
            mount_ns: false,
            hide: vec![],
            private: vec![],
            run_root: tmp.path().to_path_buf(),
            uids: Default::default(),
            next_group: 0,
        };
        let (mut a, mut b) = (mk(), mk());
        let u1 = a.uid_of("kaist-lab").unwrap();
        let u2 = b.uid_of("seoul-startup").unwrap();
        assert_ne!(u1, u2);
        assert_eq!(b.uid_of("kaist-lab").unwrap(), u1);
        assert_eq!(a.uid_of("seoul-startup").unwrap(), u2);
        let e = a.uid_of("nia-public").unwrap_err();
        assert!(e.contains("every uid"), "{e}");
        assert!(a.uid_of("bad name").is_err());
    }
}
