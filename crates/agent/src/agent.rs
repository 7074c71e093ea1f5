//! The main loop (`docs/AGENTS.md`): register, then sync, reconcile, report, and fence.
//!
//! One supervisor thread (the caller of `run`) owns every process: it starts them, so their
//! PR_SET_PDEATHSIG stays armed as long as the agent lives, and polls them each tick. Two
//! worker threads talk to the controller, one for register and sync (serialised, so that
//! epochs never change under an answer) and one for reports (so that an end is reported while
//! a long poll is held). The workers only carry requests; every decision is taken here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context;
use gosok_model::agent::{
    Assignment, EndReason, NodeEpoch, RegisterNode, RegisterRequest, RegisterResponse,
    ReportRequest, ReportResponse, SyncRequest, SyncResponse, TaskReport,
};
use tracing::{error, info, warn};

use crate::client::{Answered, CallError, Client};
use crate::config::{Config, random_hex};
use crate::leftovers::PgidFile;
use crate::logs::LogServer;
use crate::runner::{Outcome, Poll, Running, Spec, StopCause};
use crate::sandbox::{Isolation, Sandbox};

/// Most reports sent in one call.
const REPORT_BATCH: usize = 1000;
/// Before the controller has said otherwise (`docs/AGENTS.md` default).
const DEFAULT_LEASE: Duration = Duration::from_millis(10_000);

/// (node, job, attempt, task): a task is started at most once per key.
type Key = (String, u64, u32, u32);

fn key_of(a: &Assignment) -> Key {
    (a.node.clone(), a.job, a.attempt, a.task)
}

/// What the workers may still send: closed when the agent stops; the lease deadline is the
/// agent's own clock, so that nothing goes out under epochs the agent has given up.
struct Gate {
    base: Instant,
    closed: AtomicBool,
    /// Milliseconds after `base`; 0 while no lease is held.
    lease_until_ms: AtomicU64,
    /// Bumped at every fence; reports of an older generation are not sent.
    generation: AtomicU64,
}

impl Gate {
    fn open(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    fn leased(&self) -> bool {
        self.open()
            && (self.base.elapsed().as_millis() as u64) < self.lease_until_ms.load(Ordering::SeqCst)
    }
}

enum Request {
    Register(u64, RegisterRequest),
    Sync(u64, SyncRequest),
}

enum Reply {
    Registered(
        u64,
        Vec<String>,
        Result<Answered<RegisterResponse>, CallError>,
    ),
    Synced(u64, Result<Answered<SyncResponse>, CallError>),
    Reported(u64, Vec<Key>, Result<Answered<ReportResponse>, CallError>),
}

enum TaskState {
    Running(Box<Running>),
    /// Ended; `settled`: when its report was answered or dropped (or, unreported, when it
    /// ended). A settled task missing from a later answer is forgotten.
    Done {
        settled: Option<Instant>,
    },
}

struct Task {
    epoch: u64,
    state: TaskState,
}

struct Node {
    spec: RegisterNode,
    /// None: to be registered (at start, after a lost lease, after a fence).
    epoch: Option<u64>,
}

struct Agent {
    cfg: Config,
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    tasks: HashMap<Key, Task>,
    lease: Duration,
    gate: Arc<Gate>,
    generation: u64,
    version: u64,
    logs_url: String,
    logs_secret: String,
    comms: Sender<Request>,
    comms_busy: bool,
    reports: Sender<(u64, Vec<Key>, ReportRequest)>,
    reports_busy: bool,
    /// Reports of ended tasks not yet sent.
    pending: Vec<(Key, TaskReport)>,
    pgids: PgidFile,
    /// None with `--isolation none`.
    sandbox: Option<Sandbox>,
    /// Assigned tasks not started yet, in the order they were assigned; `desired` is the
    /// latest desired set, so that one that left it meanwhile is never started.
    to_start: VecDeque<Assignment>,
    queued: HashSet<Key>,
    desired: HashSet<Key>,
    /// The watchdog's stdin: the agent tells it each lease deadline.
    watchdog: Option<(std::process::Child, std::process::ChildStdin)>,
    ever_registered: bool,
    /// After a refused registration: not before this (syncing for the other nodes goes on).
    register_not_before: Option<Instant>,
    /// After a failed sync (not a transport error: those are retried in the client).
    sync_not_before: Option<Instant>,
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// Runs the agent until `cfg.stop` is set (or SIGTERM/SIGINT with `handle_signals`): every
/// task is then stopped with its grace period and `run` returns `Ok`. Returns an error when
/// the agent cannot start (work directory, log server) or the controller refuses it for good
/// (a bad token, a node that contradicts its declaration).
pub fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.nodes.is_empty() {
        anyhow::bail!("no nodes to register");
    }
    std::fs::create_dir_all(&cfg.work_dir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            cfg.work_dir.display()
        )
    })?;
    let work_dir = cfg.work_dir.canonicalize()?;
    let (pgids, leftover) = PgidFile::open(&work_dir)
        .with_context(|| format!("cannot write {}", work_dir.join("pgids").display()))?;
    if leftover > 0 {
        info!(
            groups = leftover,
            "killed what a previous agent left (control groups and process groups)"
        );
    }
    let sandbox = match cfg.isolation {
        Isolation::Sandbox => {
            let s = Sandbox::new(cfg.sandbox.clone(), &work_dir).map_err(|e| {
                anyhow::anyhow!("the task sandbox cannot be set up: {e}; run the agent as root on a machine with control groups, or start it with --isolation none to run tasks unisolated as its own user")
            })?;
            info!(
                mount_namespaces = s.mount_ns(),
                "tasks run sandboxed: their tenants' accounts, control groups, private /tmp"
            );
            Some(s)
        }
        Isolation::None => {
            warn!(
                "--isolation none: tasks run as the agent's own user, without limits, and can see what it sees"
            );
            None
        }
    };
    let watchdog = match &cfg.watchdog {
        Some(cmd) => Some(spawn_watchdog(cmd, &work_dir)?),
        None => None,
    };
    if cfg.handle_signals {
        install_signal_handlers();
    }
    crate::runner::become_subreaper();
    let logs_secret = random_hex(32);
    let logs_dir = work_dir.join("logs");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&logs_dir)
        .with_context(|| format!("cannot create {}", logs_dir.display()))?;
    let log_server = LogServer::start(cfg.logs_listen, logs_dir, logs_secret.clone())?;
    let logs_url = if log_server.addr.ip().is_unspecified() {
        format!("http://{}:{}", cfg.address, log_server.addr.port())
    } else {
        format!("http://{}", log_server.addr)
    };
    info!(agent = %cfg.agent_id, logs = %logs_url, work_dir = %work_dir.display(), nodes = cfg.nodes.len(), "agent starting");

    let gate = Arc::new(Gate {
        base: Instant::now(),
        closed: AtomicBool::new(false),
        lease_until_ms: AtomicU64::new(0),
        generation: AtomicU64::new(0),
    });
    let client = Client::new(&cfg.server, &cfg.token, cfg.tls.clone());
    let (reply_tx, replies) = mpsc::channel();
    let comms = spawn_comms(client.clone(), gate.clone(), reply_tx.clone())?;
    let reports = spawn_reports(client, gate.clone(), reply_tx)?;

    let nodes: Vec<Node> = cfg
        .nodes
        .iter()
        .map(|n| Node {
            spec: n.clone(),
            epoch: None,
        })
        .collect();
    let by_name = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.spec.name.clone(), i))
        .collect();
    let mut agent = Agent {
        cfg: Config { work_dir, ..cfg },
        nodes,
        by_name,
        tasks: HashMap::new(),
        lease: DEFAULT_LEASE,
        gate: gate.clone(),
        generation: 0,
        version: 0,
        logs_url,
        logs_secret,
        comms,
        comms_busy: false,
        reports,
        reports_busy: false,
        pending: Vec::new(),
        pgids,
        sandbox,
        to_start: VecDeque::new(),
        queued: HashSet::new(),
        desired: HashSet::new(),
        watchdog,
        ever_registered: false,
        register_not_before: None,
        sync_not_before: None,
    };
    let result = agent.main_loop(&replies);
    gate.closed.store(true, Ordering::SeqCst);
    drop(log_server);
    if let Some((mut child, mut pipe)) = agent.watchdog.take() {
        // Every task was stopped: tell the watchdog it has nothing to do.
        use std::io::Write;
        let _ = pipe.write_all(&[crate::leftovers::WATCHDOG_CLEAN_EXIT]);
        drop(pipe);
        let _ = child.wait();
    }
    result
}

/// Starts the watchdog in its own process group (a Ctrl-C meant for the agent must not stop
/// it), holding the write end of its stdin.
fn spawn_watchdog(
    cmd: &[std::ffi::OsString],
    work_dir: &std::path::Path,
) -> anyhow::Result<(std::process::Child, std::process::ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("the watchdog command is empty"))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .arg(work_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the agent's watchdog")?;
    let pipe = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("the watchdog has no stdin"))?;
    Ok((child, pipe))
}

fn spawn_comms(
    client: Client,
    gate: Arc<Gate>,
    out: Sender<Reply>,
) -> std::io::Result<Sender<Request>> {
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("gosok-agent-sync".into())
        .spawn(move || {
            let log = |m: &str| warn!("{m}");
            for req in rx {
                let reply = match req {
                    Request::Register(g, r) => {
                        let names = r.nodes.iter().map(|n| n.name.clone()).collect();
                        Reply::Registered(g, names, client.register(&r, &|| gate.open(), &log))
                    }
                    Request::Sync(g, r) => {
                        Reply::Synced(g, client.sync(&r, &|| gate.leased(), &log))
                    }
                };
                if out.send(reply).is_err() {
                    break;
                }
            }
        })?;
    Ok(tx)
}

fn spawn_reports(
    client: Client,
    gate: Arc<Gate>,
    out: Sender<Reply>,
) -> std::io::Result<Sender<(u64, Vec<Key>, ReportRequest)>> {
    let (tx, rx) = mpsc::channel::<(u64, Vec<Key>, ReportRequest)>();
    std::thread::Builder::new()
        .name("gosok-agent-report".into())
        .spawn(move || {
            let log = |m: &str| warn!("{m}");
            for (g, keys, req) in rx {
                let current = || gate.leased() && gate.generation.load(Ordering::SeqCst) == g;
                let r = client.report(&req, &current, &log);
                if out.send(Reply::Reported(g, keys, r)).is_err() {
                    break;
                }
            }
        })?;
    Ok(tx)
}

impl Agent {
    fn main_loop(&mut self, replies: &Receiver<Reply>) -> anyhow::Result<()> {
        let mut inbox = Vec::new();
        loop {
            // With starts queued, turn again at once: the budget, not the tick, paces them.
            let wait = if self.to_start.is_empty() {
                self.cfg.tick
            } else {
                Duration::ZERO
            };
            match replies.recv_timeout(wait) {
                Ok(r) => {
                    inbox.push(r);
                    inbox.extend(replies.try_iter());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the agent's workers stopped"),
            }
            // Fencing comes before anything an answer could make the agent do or send.
            let now = Instant::now();
            self.fence_if_lease_lost(now);
            for r in inbox.drain(..) {
                self.handle(r)?;
            }
            if self.cfg.stop.load(Ordering::SeqCst) || SIGNALLED.load(Ordering::SeqCst) {
                return self.shutdown();
            }
            self.poll_tasks(Instant::now());
            self.dispatch(Instant::now());
            self.start_some(Instant::now() + self.cfg.spawn_budget);
        }
    }

    fn lease_deadline(&self) -> Instant {
        self.gate.base + Duration::from_millis(self.gate.lease_until_ms.load(Ordering::SeqCst))
    }

    fn set_lease(&mut self, sent: Instant, lease: Duration) {
        self.lease = lease;
        let until = (sent + lease).duration_since(self.gate.base).as_millis() as u64;
        self.gate.lease_until_ms.store(until, Ordering::SeqCst);
        self.tell_watchdog(Some(sent + lease));
    }

    /// Tells the watchdog when the lease runs out (None: no lease is held), on the clock it
    /// reads too (CLOCK_BOOTTIME, which goes on through a suspend): if the agent is frozen
    /// past it, the watchdog kills the tasks, so that they are dead before the controller
    /// (lease + margin after it last heard from the agent) gives them to another node.
    fn tell_watchdog(&mut self, deadline: Option<Instant>) {
        let Some((_, pipe)) = &mut self.watchdog else {
            return;
        };
        // Read the boot clock first: a pause between the two readings makes the deadline
        // earlier, never later.
        let boot_now = crate::leftovers::boottime_ms();
        let ms = match deadline {
            Some(d) => boot_now + d.saturating_duration_since(Instant::now()).as_millis() as u64,
            None => 0,
        };
        use std::io::Write;
        if let Err(e) = pipe.write_all(format!("L{ms}\n").as_bytes()) {
            error!(
                "the watchdog is gone ({e}): a frozen agent's tasks would no longer be killed at the end of its lease"
            );
            self.watchdog = None;
        }
    }

    fn fence_if_lease_lost(&mut self, now: Instant) {
        if self.nodes.iter().any(|n| n.epoch.is_some()) && now >= self.lease_deadline() {
            self.fence(now);
        }
    }

    /// No sync for a whole lease: the controller may have given every task to another node.
    fn fence(&mut self, now: Instant) {
        self.gate.lease_until_ms.store(0, Ordering::SeqCst);
        self.tell_watchdog(None);
        self.to_start.clear();
        self.queued.clear();
        self.desired.clear();
        self.generation += 1;
        self.gate
            .generation
            .store(self.generation, Ordering::SeqCst);
        let mut killed = 0;
        for t in self.tasks.values_mut() {
            if let TaskState::Running(r) = &mut t.state {
                r.kill(now);
                killed += 1;
            }
        }
        for n in &mut self.nodes {
            n.epoch = None;
        }
        self.version = 0;
        let dropped = self.pending.len();
        for (k, _) in self.pending.drain(..) {
            if let Some(t) = self.tasks.get_mut(&k) {
                t.state = TaskState::Done { settled: Some(now) };
            }
        }
        warn!(
            killed,
            dropped_reports = dropped,
            lease_ms = self.lease.as_millis() as u64,
            "lease lost: no sync for a whole lease; killed every task, registering again"
        );
    }

    fn handle(&mut self, reply: Reply) -> anyhow::Result<()> {
        match reply {
            Reply::Registered(g, names, r) => {
                self.comms_busy = false;
                if g != self.generation {
                    return Ok(());
                }
                self.registered(names, r)
            }
            Reply::Synced(g, r) => {
                self.comms_busy = false;
                if g != self.generation {
                    return Ok(());
                }
                self.synced(r)
            }
            Reply::Reported(g, keys, r) => {
                self.reports_busy = false;
                let _ = g;
                self.reported(keys, r);
                Ok(())
            }
        }
    }

    fn registered(
        &mut self,
        names: Vec<String>,
        r: Result<Answered<RegisterResponse>, CallError>,
    ) -> anyhow::Result<()> {
        let a = match r {
            Ok(a) => a,
            Err(CallError::Aborted) => return Ok(()),
            Err(e) => {
                if !self.ever_registered {
                    return Err(anyhow::anyhow!("cannot register the nodes: {e}"));
                }
                error!(
                    "cannot register {} nodes: {e}; trying again in 5 s",
                    names.len()
                );
                self.register_not_before = Some(Instant::now() + Duration::from_secs(5));
                return Ok(());
            }
        };
        let all = names.len() == self.nodes.len();
        let mut epochs = Vec::new();
        for ne in &a.value.nodes {
            if let Some(&i) = self.by_name.get(&ne.name) {
                self.nodes[i].epoch = Some(ne.epoch);
                epochs.push(ne.epoch);
            }
        }
        if all || !self.ever_registered {
            self.set_lease(a.sent, Duration::from_millis(a.value.lease_ms));
        }
        self.ever_registered = true;
        self.version = 0;
        let (lo, hi) = (epochs.iter().min(), epochs.iter().max());
        if names.len() == 1 {
            info!(node = %names[0], epoch = lo.copied().unwrap_or(0), lease_ms = a.value.lease_ms, "registered");
        } else {
            info!(
                nodes = names.len(),
                epochs = %format!("{}..{}", lo.copied().unwrap_or(0), hi.copied().unwrap_or(0)),
                lease_ms = a.value.lease_ms,
                "registered"
            );
        }
        Ok(())
    }

    fn synced(&mut self, r: Result<Answered<SyncResponse>, CallError>) -> anyhow::Result<()> {
        let a = match r {
            Ok(a) => a,
            // The lease ran out while retrying: fencing has taken over.
            Err(CallError::Aborted) => return Ok(()),
            Err(
                e @ CallError::Refused {
                    status: 401 | 403, ..
                },
            ) => {
                return Err(anyhow::anyhow!("the controller refuses this agent: {e}"));
            }
            Err(e) => {
                error!("sync failed: {e}; trying again in 1 s");
                self.sync_not_before = Some(Instant::now() + Duration::from_secs(1));
                return Ok(());
            }
        };
        let now = Instant::now();
        if a.sent + self.lease <= now {
            // Answered too late to count: the lease ran out by the agent's clock meanwhile.
            self.fence(now);
            return Ok(());
        }
        let resp = a.value;
        self.set_lease(a.sent, Duration::from_millis(resp.lease_ms));
        self.version = resp.version;
        for nl in &resp.nodes {
            let Some(&i) = self.by_name.get(&nl.name) else {
                continue;
            };
            if nl.valid || self.nodes[i].epoch != Some(nl.epoch) {
                continue;
            }
            self.nodes[i].epoch = None;
            let mut killed = 0;
            for (k, t) in &mut self.tasks {
                if k.0 == nl.name
                    && let TaskState::Running(r) = &mut t.state
                {
                    r.kill(now);
                    killed += 1;
                }
            }
            warn!(node = %nl.name, epoch = nl.epoch, killed, "lease lost: the controller says the node's epoch is dead; registering it again");
        }
        self.reconcile(&resp.tasks, a.sent, now);
        Ok(())
    }

    /// Starts what is listed and not yet started, stops what runs and is not listed.
    fn reconcile(&mut self, desired: &[Assignment], sent: Instant, now: Instant) {
        let mut wanted: HashMap<Key, &Assignment> = HashMap::with_capacity(desired.len());
        for a in desired {
            let Some(&i) = self.by_name.get(&a.node) else {
                continue;
            };
            if self.nodes[i].epoch == Some(a.epoch) {
                wanted.insert(key_of(a), a);
            }
        }
        let mut forget = Vec::new();
        for (k, t) in &mut self.tasks {
            if wanted.contains_key(k) {
                continue;
            }
            match &mut t.state {
                TaskState::Running(r) => {
                    if !r.stopping() {
                        info!(node = %k.0, job = k.1, attempt = k.2, task = k.3, "stopping: no longer assigned");
                        r.stop(StopCause::Killed, now);
                    }
                }
                TaskState::Done { settled: Some(at) } if *at < sent => forget.push(k.clone()),
                TaskState::Done { .. } => {}
            }
        }
        for k in forget {
            self.tasks.remove(&k);
        }
        self.desired = wanted.keys().cloned().collect();
        let mut new: Vec<&Assignment> = wanted
            .into_iter()
            .filter(|(k, _)| !self.tasks.contains_key(k) && !self.queued.contains(k))
            .map(|(_, a)| a)
            .collect();
        // Oldest jobs first, a gang's tasks together.
        new.sort_by_key(|a| (a.job, a.attempt, a.task));
        for a in new {
            self.queued.insert(key_of(a));
            self.to_start.push_back(a.clone());
        }
        let _ = self.pgids.compact(
            self.tasks
                .values()
                .filter_map(|t| match &t.state {
                    TaskState::Running(r) => Some(r.pgid()),
                    TaskState::Done { .. } => None,
                })
                .collect::<Vec<_>>()
                .into_iter(),
        );
    }

    /// Starts queued tasks until `until`; tasks that left the desired set, or whose node's
    /// epoch changed, since they were queued are dropped.
    fn start_some(&mut self, until: Instant) {
        while let Some(a) = self.to_start.pop_front() {
            let k = key_of(&a);
            self.queued.remove(&k);
            let current = self
                .by_name
                .get(&a.node)
                .is_some_and(|&i| self.nodes[i].epoch == Some(a.epoch));
            if !current || !self.desired.contains(&k) || self.tasks.contains_key(&k) {
                continue;
            }
            self.start(k, &a);
            if Instant::now() >= until {
                break;
            }
        }
    }

    fn spec(&mut self, a: &Assignment) -> Result<Spec, String> {
        let name = format!("{}-{}-{}", a.job, a.attempt, a.task);
        let log_dir = self
            .cfg
            .work_dir
            .join("logs")
            .join(a.job.to_string())
            .join(a.attempt.to_string())
            .join(a.task.to_string());
        let workdir = a.workdir.as_ref().map(PathBuf::from);
        // A task that reserved no memory may still use no more than its node has.
        let mem_mib = if a.mem_mib > 0 {
            a.mem_mib
        } else {
            self.by_name
                .get(&a.node)
                .map_or(0, |&i| self.nodes[i].spec.mem_mib)
        };
        let (sandbox, run_dir, user) = match &mut self.sandbox {
            Some(s) => {
                let p = s.prepare(&name, &a.tenant, mem_mib, a.cpu_milli, workdir.as_deref())?;
                let (run_dir, user) = (p.run_dir.clone(), p.user.clone());
                (Some(p), run_dir, user)
            }
            None => (
                None,
                self.cfg.work_dir.join("run").join(&name),
                format!("gosok-{}", a.tenant),
            ),
        };
        Ok(Spec {
            command: a.command.clone(),
            env: a.env.clone(),
            user,
            workdir,
            log_dir,
            run_dir,
            limit: a.limit_s.map(Duration::from_secs),
            grace: Duration::from_secs(a.grace_s),
            sandbox,
        })
    }

    fn start(&mut self, k: Key, a: &Assignment) {
        let t0 = Instant::now();
        let mut prepared = t0;
        match self.spec(a).and_then(|s| {
            prepared = Instant::now();
            Running::spawn(s)
        }) {
            Ok(r) => {
                if let Err(e) = self.pgids.add(r.pgid()) {
                    warn!(
                        "cannot record process group {} in the work directory: {e}",
                        r.pgid()
                    );
                }
                // spawn_us: the sandbox (account, control group, scratch directory) and the
                // fork and exec, as `gosok bench agents` reports it.
                let spawn_us = t0.elapsed().as_micros() as u64;
                let sandbox_us = prepared.duration_since(t0).as_micros() as u64;
                info!(node = %a.node, job = a.job, attempt = a.attempt, task = a.task, pid = r.pgid(), spawn_us, sandbox_us, "started");
                self.tasks.insert(
                    k,
                    Task {
                        epoch: a.epoch,
                        state: TaskState::Running(Box::new(r)),
                    },
                );
            }
            Err(message) => {
                warn!(node = %a.node, job = a.job, attempt = a.attempt, task = a.task, "spawn failed: {message}");
                let mut o = Outcome::spawn_failed(message);
                o.exit_code = Some(127);
                self.ended(k.clone(), a.epoch, o);
                self.tasks.insert(
                    k,
                    Task {
                        epoch: a.epoch,
                        state: TaskState::Done { settled: None },
                    },
                );
            }
        }
    }

    fn ended(&mut self, k: Key, epoch: u64, o: Outcome) {
        let report = TaskReport {
            node: k.0.clone(),
            epoch,
            job: k.1,
            attempt: k.2,
            task: k.3,
            exit_code: o.exit_code,
            signal: o.signal,
            reason: o.reason,
            message: o.message,
            energy_mj: None,
        };
        self.pending.push((k, report));
    }

    fn poll_tasks(&mut self, now: Instant) {
        crate::runner::reap_children();
        let mut ended = Vec::new();
        for (k, t) in &mut self.tasks {
            if let TaskState::Running(r) = &mut t.state
                && let Poll::Ended(outcome) = r.poll(now)
            {
                ended.push((k.clone(), t.epoch, outcome));
            }
        }
        for (k, epoch, outcome) in ended {
            let settled = match outcome {
                Some(o) => {
                    let how = match (o.reason, o.exit_code, o.signal) {
                        (EndReason::Limit, _, _) => "stopped at its runtime limit".to_string(),
                        (_, _, Some(s)) => format!("killed by signal {s}"),
                        (_, Some(c), _) => format!("exited with code {c}"),
                        _ => "ended".to_string(),
                    };
                    info!(node = %k.0, job = k.1, attempt = k.2, task = k.3, "ended: {how}");
                    self.ended(k.clone(), epoch, o);
                    None
                }
                None => {
                    info!(node = %k.0, job = k.1, attempt = k.2, task = k.3, "killed");
                    Some(now)
                }
            };
            if let Some(t) = self.tasks.get_mut(&k) {
                t.state = TaskState::Done { settled };
            }
        }
    }

    fn dispatch(&mut self, now: Instant) {
        if !self.comms_busy {
            let running: HashSet<&str> = self
                .tasks
                .iter()
                .filter(|(_, t)| matches!(t.state, TaskState::Running(_)))
                .map(|(k, _)| k.0.as_str())
                .collect();
            // A node is registered again only once its old tasks are gone.
            let to_register: Vec<RegisterNode> = self
                .nodes
                .iter()
                .filter(|n| n.epoch.is_none() && !running.contains(n.spec.name.as_str()))
                .map(|n| n.spec.clone())
                .collect();
            let held: Vec<NodeEpoch> = self
                .nodes
                .iter()
                .filter_map(|n| {
                    n.epoch.map(|epoch| NodeEpoch {
                        name: n.spec.name.clone(),
                        epoch,
                    })
                })
                .collect();
            let may_register = self.register_not_before.is_none_or(|t| now >= t);
            let may_sync = self.sync_not_before.is_none_or(|t| now >= t);
            let req = if !to_register.is_empty() && may_register {
                Some(Request::Register(
                    self.generation,
                    RegisterRequest {
                        agent: self.cfg.agent_id.clone(),
                        address: self.cfg.address.clone(),
                        logs_url: self.logs_url.clone(),
                        logs_secret: self.logs_secret.clone(),
                        nodes: to_register,
                    },
                ))
            } else if !held.is_empty() && may_sync {
                Some(Request::Sync(
                    self.generation,
                    SyncRequest {
                        agent: self.cfg.agent_id.clone(),
                        nodes: held,
                        version: self.version,
                        // Long enough to spare the controller, short enough to renew well in time.
                        wait_ms: (self.lease.as_millis() as u64 / 4).clamp(1, 30_000),
                        logs_url: self.logs_url.clone(),
                        logs_secret: self.logs_secret.clone(),
                    },
                ))
            } else {
                None
            };
            if let Some(req) = req {
                self.comms_busy = self.comms.send(req).is_ok();
            }
        }
        if !self.reports_busy && !self.pending.is_empty() && self.gate.leased() {
            let n = self.pending.len().min(REPORT_BATCH);
            let batch: Vec<(Key, TaskReport)> = self.pending.drain(..n).collect();
            let (keys, reports): (Vec<Key>, Vec<TaskReport>) = batch.into_iter().unzip();
            let req = ReportRequest {
                agent: self.cfg.agent_id.clone(),
                reports,
            };
            self.reports_busy = self.reports.send((self.generation, keys, req)).is_ok();
        }
    }

    fn reported(&mut self, keys: Vec<Key>, r: Result<Answered<ReportResponse>, CallError>) {
        let now = Instant::now();
        match r {
            Ok(a) => {
                for res in a.value.results.iter().filter(|r| !r.accepted) {
                    warn!(
                        job = res.job,
                        task = res.task,
                        code = res.code.as_deref().unwrap_or(""),
                        "report refused: {}",
                        res.message
                    );
                }
                if !keys.is_empty() {
                    info!(
                        reports = keys.len(),
                        refused = a.value.results.iter().filter(|r| !r.accepted).count(),
                        "reported"
                    );
                }
            }
            // Not sent: the lease ran out (fencing drops them anyway) or the agent stops.
            Err(CallError::Aborted) => {}
            Err(e) => error!(reports = keys.len(), "reports dropped: {e}"),
        }
        for k in keys {
            if let Some(t) = self.tasks.get_mut(&k) {
                t.state = TaskState::Done { settled: Some(now) };
            }
        }
    }

    /// Stops every task with its grace period, then returns.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.gate.closed.store(true, Ordering::SeqCst);
        self.to_start.clear();
        let now = Instant::now();
        let mut n = 0;
        for t in self.tasks.values_mut() {
            if let TaskState::Running(r) = &mut t.state {
                r.stop(StopCause::Killed, now);
                n += 1;
            }
        }
        info!(tasks = n, "stopping: every task gets its grace period");
        loop {
            let now = Instant::now();
            let mut left = 0;
            for t in self.tasks.values_mut() {
                if let TaskState::Running(r) = &mut t.state {
                    if r.poll(now) == Poll::Running {
                        left += 1;
                    } else {
                        t.state = TaskState::Done { settled: Some(now) };
                    }
                }
            }
            if left == 0 {
                info!("stopped");
                return Ok(());
            }
            std::thread::sleep(self.cfg.tick);
        }
    }
}
