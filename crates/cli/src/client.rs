//! The CLI's client commands: they talk to `gosok server` over its HTTP API.
//!
//! Server and token come from `--server`/`--token`, else `GOSOK_SERVER`/`GOSOK_TOKEN`, else
//! the client config file (`--config`, `GOSOK_CONFIG`, or `~/.config/gosok/client.toml` with
//! `server = "..."` and `token = "..."`), else `http://127.0.0.1:8080`. The credentials file
//! `gosok up` writes is a client config as it is: `url` and `admin_token` are read as
//! `server` and `token`, and `--as TENANT` picks a token of `[tenant_tokens]` (or of a
//! `[profile.NAME]` table with its own `server` and `token`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    /// The table with more columns.
    Wide,
    Json,
    /// Comma-separated values (usage and statements; other commands print their table).
    Csv,
}

/// Flags every client command takes; given before the subcommand (`gosok --config X jobs`)
/// they are moved after it, where the parser reads them.
const GLOBAL_FLAGS: &[&str] = &[
    "--server", "--token", "--config", "--ca", "--output", "-o", "--as",
];

/// `gosok --config X --as t jobs --state running` → `gosok jobs --config X --as t --state
/// running`: the client flags are defined on each client command (the server's own commands
/// have a `--config` of another meaning), so ones written before the subcommand are moved.
pub fn move_global_flags(args: &mut Vec<std::ffi::OsString>) {
    let mut moved = Vec::new();
    let i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let name = a.split('=').next().unwrap_or_default();
        if !GLOBAL_FLAGS.contains(&name) {
            break;
        }
        moved.push(args.remove(i));
        if !a.contains('=') && i < args.len() {
            moved.push(args.remove(i));
        }
    }
    if !moved.is_empty() && i < args.len() {
        // After the subcommand's name.
        for (k, m) in moved.into_iter().enumerate() {
            args.insert(i + 1 + k, m);
        }
    } else {
        // Nothing follows: leave them for the parser to complain about.
        for (k, m) in moved.into_iter().enumerate() {
            args.insert(i + k, m);
        }
    }
}

#[derive(Args, Clone)]
pub struct Conn {
    /// Server URL (default: GOSOK_SERVER, the config file, or http://127.0.0.1:8080).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Bearer token (default: GOSOK_TOKEN or the config file).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Client config file (TOML with `server`, `token` and `ca`; `gosok up`'s
    /// credentials.toml is one).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Act as this tenant: its token from the config's `[tenant_tokens]`, or the
    /// `[profile.NAME]` table (default: GOSOK_AS).
    #[arg(long = "as", global = true, value_name = "NAME")]
    as_profile: Option<String>,
    /// For an https:// server: the CA certificate (PEM) to trust instead of the usual
    /// public ones (default: GOSOK_CA or the config file).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// `json` prints the API's JSON, for scripts; `wide` is the table with more columns.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Subcommand)]
pub enum Command {
    /// Submit a job: a batch script with #SBATCH/#GOSOK directives, a JSON, TOML or YAML
    /// spec, or flags (`gosok submit --accelerators 8 --model H100 -- python train.py`).
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job: spec, state, placement, events, and why it waits.
    Show(IdArgs),
    /// Cancel jobs: by id (several at once), or every job of yours matching --state,
    /// --name (and --tenant for operators).
    Cancel(CancelArgs),
    /// Hold pending jobs: they are not started until released.
    Hold(IdsArgs),
    /// Release held jobs.
    Release(IdsArgs),
    /// Stop running jobs and queue them again (`--hold` keeps them held).
    Requeue(RequeueArgs),
    /// The accelerator catalog: models with HBM, board power and relative throughput.
    Catalog(ConnOnly),
    /// Pending jobs in the order the engine will consider them, with reasons.
    Queue(QueueArgs),
    /// Nodes, their state and use; `drain` / `undrain` a node.
    Nodes(NodesArgs),
    /// Sites with their power draw against budget; `set-budget` changes a budget.
    Sites(SitesArgs),
    /// Tenants; `create` one.
    Tenants(TenantsArgs),
    /// Tokens: `create TENANT` (shown once), `revoke ID`.
    Token(TokenArgs),
    /// Declare the highway from a TOML cluster file (idempotent; prints what changed).
    Apply(ApplyArgs),
    /// Print the highway's topology and tenants as a TOML cluster file.
    Export(ConnOnly),
    /// A job's output (stdout, then stderr), read through the controller from the agent
    /// that ran it; `--follow` keeps printing until the job ends.
    Logs(LogsArgs),
}

#[derive(Args)]
pub struct LogsArgs {
    /// The job id.
    id: u64,
    /// The task (replica) index.
    #[arg(long, default_value_t = 0)]
    task: u32,
    /// Keep printing new output until the job ends.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct ConnOnly {
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// A job spec (.json, .toml, .yaml; `-` reads standard input) or a batch script with
    /// `#GOSOK`/`#SBATCH` directives (run as the job's command); without it the flags
    /// describe the job.
    file: Option<String>,
    /// Accelerators per replica: whole ones, or a fraction of one shareable device (0.5).
    #[arg(long)]
    accelerators: Option<f64>,
    /// Acceptable accelerator model or class (repeat for several).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Replicas (tasks) of the gang, each on its node with its accelerators.
    #[arg(long)]
    replicas: Option<u64>,
    #[arg(long)]
    name: Option<String>,
    /// Priority class: scavenger, low, normal, high, critical.
    #[arg(long)]
    priority: Option<String>,
    /// Expected runtime in seconds (reservations and backfill plan with it).
    #[arg(long)]
    estimate_s: Option<u64>,
    /// Hard runtime limit in seconds.
    #[arg(long)]
    limit_s: Option<u64>,
    /// What a failed task does to its gang: fail_job (stop the gang, the default) or continue.
    #[arg(long)]
    on_task_failure: Option<String>,
    /// The tenant to submit for (admin tokens only).
    #[arg(long)]
    tenant: Option<String>,
    /// Environment for the tasks, `NAME=VALUE` (repeat for several).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the tasks (a relative one is resolved here; default: this
    /// directory when the controller is on this host, as `gosok up`'s agents are).
    #[arg(long)]
    workdir: Option<String>,
    /// A job array: `0-99%8` is 100 tasks, at most 8 at once; each gets
    /// GOSOK_ARRAY_TASK_ID.
    #[arg(long)]
    array: Option<String>,
    /// Start only after other jobs: afterok:ID[:ID], afterany:ID, afternotok:ID,
    /// singleton (comma-separated, all must hold).
    #[arg(long)]
    dependency: Option<String>,
    /// Submit held: not started until `gosok release`.
    #[arg(long)]
    hold: bool,
    /// Retrying with the same key and spec returns the same job, never a second one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The command the job's tasks run.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long)]
    state: Option<String>,
    /// Only this tenant's jobs (admin tokens only).
    #[arg(long)]
    tenant: Option<String>,
    /// Only jobs of this name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u64,
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct IdArgs {
    id: u64,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct IdsArgs {
    #[arg(required = true)]
    ids: Vec<u64>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct RequeueArgs {
    #[arg(required = true)]
    ids: Vec<u64>,
    /// Keep them held in the queue until `gosok release`.
    #[arg(long)]
    hold: bool,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct CancelArgs {
    /// Job ids; or none, with filters.
    ids: Vec<u64>,
    /// Cancel every job in this state (pending, held, running).
    #[arg(long)]
    state: Option<String>,
    /// Cancel every job of this name.
    #[arg(long)]
    name: Option<String>,
    /// Only this tenant's jobs (admin tokens only).
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct QueueArgs {
    #[arg(long)]
    limit: Option<u64>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    action: Option<NodeAction>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum NodeAction {
    /// Running work continues; nothing new is placed.
    Drain { node: String },
    /// Mark the node up (until agents exist, how a declared node starts taking work).
    Undrain { node: String },
}

#[derive(Args)]
pub struct SitesArgs {
    #[command(subcommand)]
    action: Option<SiteAction>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum SiteAction {
    /// Change a site's facility power budget; a lower one sheds preemptible work at once.
    SetBudget { site: String, power_budget_mw: f64 },
}

#[derive(Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    action: Option<TenantAction>,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum TenantAction {
    /// Create a tenant.
    Create {
        name: String,
        /// anchor, commercial, public, academic or startup.
        #[arg(long, default_value = "startup")]
        tier: String,
        #[arg(long)]
        weight: Option<f64>,
        /// Largest fraction of the highway the tenant may hold (0..1].
        #[arg(long)]
        share_cap: Option<f64>,
    },
    /// Update a tenant's weight, share cap, priority entitlement or storage limits.
    Update {
        name: String,
        #[arg(long)]
        weight: Option<f64>,
        #[arg(long)]
        share_cap: Option<f64>,
        /// The highest priority class its tokens may submit at (scavenger, low, normal,
        /// high, critical).
        #[arg(long)]
        max_priority: Option<String>,
        /// Most jobs it may have pending at once.
        #[arg(long)]
        max_pending_jobs: Option<u64>,
        /// Most bytes of command, env and workdir per job.
        #[arg(long)]
        max_job_bytes: Option<u64>,
        /// Most bytes of command, env and workdir over its pending and running jobs.
        #[arg(long)]
        max_stored_bytes: Option<u64>,
    },
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
    #[command(flatten)]
    c: Conn,
}

#[derive(Subcommand)]
enum TokenAction {
    /// A new token for the tenant (or with `--agent` a node-agent token); shown once.
    Create {
        #[arg(required_unless_present = "agent")]
        tenant: Option<String>,
        /// A token for node agents: it may call only /v1/agent/*.
        #[arg(long, conflicts_with = "tenant")]
        agent: bool,
    },
    /// Revoke a token by its id.
    Revoke { id: String },
    /// List a tenant's tokens (ids only).
    List { tenant: String },
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The TOML cluster file (the format `gosok sim` reads).
    file: PathBuf,
    /// Only say what would change.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    c: Conn,
}

// ---- the HTTP client ---------------------------------------------------------------------

pub(crate) struct Client {
    /// The controller, or the replicas of one (comma-separated in `--server`): requests go
    /// to the current one, and to the next when it cannot be reached or has no leader.
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    token: Option<String>,
    agent: ureq::Agent,
    pub(crate) output: Output,
}

#[derive(serde::Deserialize, Default)]
struct ClientFile {
    #[serde(alias = "url")]
    server: Option<String>,
    #[serde(alias = "admin_token")]
    token: Option<String>,
    ca: Option<PathBuf>,
    /// Tenant tokens by tenant (`gosok up` writes them), for `--as TENANT`.
    #[serde(default)]
    tenant_tokens: std::collections::BTreeMap<String, String>,
    /// Named profiles, for `--as NAME`.
    #[serde(default)]
    profile: std::collections::BTreeMap<String, Profile>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Profile {
    server: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

pub(crate) use gosok_agent::client::tls_trusting;

impl Client {
    pub(crate) fn new(c: &Conn) -> anyhow::Result<Client> {
        let path = c
            .config
            .clone()
            .or_else(|| std::env::var_os("GOSOK_CONFIG").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/gosok/client.toml"))
            });
        let file = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                toml::from_str::<ClientFile>(&text)
                    .with_context(|| format!("{} is not a client config", p.display()))?
            }
            Some(p) if c.config.is_some() => bail!("{} does not exist", p.display()),
            _ => ClientFile::default(),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut file = file;
        if let Some(name) = c.as_profile.clone().or_else(|| env("GOSOK_AS")) {
            let where_ = path
                .as_ref()
                .map_or("the client config".to_string(), |p| p.display().to_string());
            if let Some(p) = file.profile.remove(&name) {
                file.server = p.server.or(file.server);
                file.token = p.token;
                file.ca = p.ca.or(file.ca);
            } else if let Some(t) = file.tenant_tokens.remove(&name) {
                file.token = Some(t);
            } else {
                let known: Vec<&String> = file
                    .profile
                    .keys()
                    .chain(file.tenant_tokens.keys())
                    .collect();
                bail!(
                    "--as {name}: {where_} has no [profile.{name}] and no tenant_tokens.{name}{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (it has: {})",
                            known
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            }
        }
        let base = c
            .server
            .clone()
            .or_else(|| env("GOSOK_SERVER"))
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let bases: Vec<String> = base
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| {
                let b = if b.contains("://") {
                    b.to_string()
                } else {
                    format!("http://{b}")
                };
                b.trim_end_matches('/').to_string()
            })
            .collect();
        if bases.is_empty() {
            bail!("--server: no URL given");
        }
        let token = c
            .token
            .clone()
            .or_else(|| env("GOSOK_TOKEN"))
            .or(file.token);
        let ca =
            c.ca.clone()
                .or_else(|| env("GOSOK_CA").map(PathBuf::from))
                .or(file.ca);
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60));
        if let Some(ca) = &ca {
            agent = agent.tls_config(tls_trusting(ca)?);
        }
        let agent = agent.build();
        Ok(Client {
            bases,
            current: Default::default(),
            token: token.map(|t| t.trim().to_string()),
            agent,
            output: c.output,
        })
    }

    /// The controllers in the order given, the HTTP agent and the token: for a command that
    /// asks them one by one itself (`gosok server status`).
    pub(crate) fn parts(&self) -> (&[String], &ureq::Agent, Option<&str>) {
        (&self.bases, &self.agent, self.token.as_deref())
    }

    /// The controller URL requests go to now.
    fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Sends a request built by `send` for the current controller. With several replicas
    /// it moves on to the next when one cannot be connected to (nothing was sent) or answers
    /// that no replica leads (a follower during an election: nothing was done), for up to
    /// 15 s; a request that may have been acted on is never sent twice.
    fn send(
        &self,
        send: impl Fn(&str) -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response, Box<ureq::Error>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut tries = 0usize;
        loop {
            let r = send(self.base());
            let elsewhere = match r.as_ref().map_err(|e| &**e) {
                Err(ureq::Error::Transport(t)) => {
                    self.bases.len() > 1 && t.kind() == ureq::ErrorKind::ConnectionFailed
                }
                Err(ureq::Error::Status(503, resp)) => resp.header("x-gosok-retry").is_some(),
                _ => false,
            };
            if !elsewhere || std::time::Instant::now() >= deadline {
                return r;
            }
            tries += 1;
            self.current
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if tries.is_multiple_of(self.bases.len()) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        let res = self.send(|base| {
            let mut req = self.agent.request(method, &format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            for (k, v) in headers {
                req = req.set(k, v);
            }
            match &body {
                Some((ct, b)) => req.set("Content-Type", ct).send_bytes(b),
                None => req.call(),
            }
            .map_err(Box::new)
        });
        match res {
            Ok(r) => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut r.into_reader(), &mut text)?;
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => Err(self.error(*e)),
        }
    }

    /// A failed request as the user wants to read it.
    fn error(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Status(code, r) => {
                let text = r.into_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let e = &v["error"];
                let msg = e["message"].as_str().unwrap_or(text.as_str());
                let mut s = format!("the server said {code}");
                if let Some(c) = e["code"].as_str() {
                    s.push_str(&format!(" ({c})"));
                }
                s.push_str(": ");
                if let Some(f) = e["field"].as_str() {
                    s.push_str(&format!("{f}: "));
                }
                s.push_str(msg);
                if code == 401 {
                    s.push_str("\nhint: pass --token, set GOSOK_TOKEN, or put `token = \"...\"` in the client config");
                }
                anyhow::anyhow!(s)
            }
            ureq::Error::Transport(t) => anyhow::anyhow!(
                "cannot reach the gosok server at {}: {t}\nhint: is `gosok server run` running there? (--server or GOSOK_SERVER)",
                self.base()
            ),
        }
    }

    /// A request whose answer is bytes, not JSON: the body and the response headers.
    fn raw(&self, method: &str, path: &str) -> anyhow::Result<(Vec<u8>, Headers)> {
        let res = self.send(|base| {
            let mut req = self.agent.request(method, &format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            req.call().map_err(Box::new)
        });
        match res {
            Ok(r) => {
                let headers = r
                    .headers_names()
                    .into_iter()
                    .filter_map(|k| {
                        r.header(&k)
                            .map(|v| (k.to_ascii_lowercase(), v.to_string()))
                    })
                    .collect();
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut out)?;
                Ok((out, headers))
            }
            Err(e) => Err(self.error(*e)),
        }
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, &[])
    }
    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(
            "POST",
            path,
            Some(("application/json", serde_json::to_vec(body)?)),
            &[],
        )
    }
    fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(
            "PATCH",
            path,
            Some(("application/json", serde_json::to_vec(body)?)),
            &[],
        )
    }

    /// Prints `v` as JSON, or `table(v)` for people.
    pub(crate) fn print(&self, v: &Value, table: impl FnOnce(&Value) -> String) {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Output::Table | Output::Wide | Output::Csv => print!("{}", table(v)),
        }
    }

    /// Whether the server is on this host: then its agents are too, when `gosok up`
    /// runs them, and this directory is a sensible working directory for tasks.
    fn is_local(&self) -> bool {
        let host = self
            .base()
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1")
    }
}

/// Response headers, names in lower case.
type Headers = Vec<(String, String)>;

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

/// Prints a task's output from `offsets` on (stdout to stdout, stderr to stderr); with
/// `follow`, until the job has ended and nothing more comes.
fn logs(cl: &Client, a: &LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut offsets = [0u64; 2];
    let mut attempt: Option<String> = None;
    loop {
        // Read the state first: output written before the job ended is then fetched below.
        let ended = if a.follow {
            let j = cl.get(&format!("/v1/jobs/{}", a.id))?;
            !matches!(j["state"].as_str(), Some("pending") | Some("running"))
        } else {
            true
        };
        let mut got = 0;
        for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
            let path = format!(
                "/v1/jobs/{}/logs?task={}&stream={stream}&offset={}",
                a.id, a.task, offsets[i]
            );
            let (bytes, headers) = match cl.raw("GET", &path) {
                Ok(x) => x,
                // Not started yet: wait for it when following.
                Err(e) if a.follow && e.to_string().contains("not started") => {
                    (Vec::new(), Vec::new())
                }
                Err(e) => return Err(e),
            };
            let att = headers
                .iter()
                .find(|(k, _)| k == "x-gosok-attempt")
                .map(|(_, v)| v.clone());
            if att.is_some() && att != attempt {
                if attempt.is_some() {
                    // A new attempt writes new files.
                    offsets = [0, 0];
                    eprintln!(
                        "--- job {} attempt {} ---",
                        a.id,
                        att.as_deref().unwrap_or("?")
                    );
                    attempt = att;
                    got = 1;
                    break;
                }
                attempt = att;
            }
            offsets[i] += bytes.len() as u64;
            got += bytes.len();
            if i == 0 {
                std::io::stdout().write_all(&bytes)?;
                std::io::stdout().flush()?;
            } else {
                std::io::stderr().write_all(&bytes)?;
            }
        }
        if !a.follow || (ended && got == 0) {
            return Ok(());
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Columns, left-aligned, two spaces apart.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// One table row per element of the array `v[key]` (none if it is missing).
fn rows_of(v: &Value, key: &str, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v[key]
        .as_array()
        .map(|a| a.iter().map(row).collect())
        .unwrap_or_default()
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn ago(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn jobs_table(v: &Value, wide: bool) -> String {
    let rows = rows_of(v, "jobs", |j| {
        let mut row = vec![
            s(&j["id"]),
            s(&j["tenant"]),
            s(&j["name"]),
            state_word(&j["state"]),
            s(&j["accelerators"]),
            ago(&j["submitted_at_ms"]),
        ];
        if wide {
            row.push(
                match (j["ended_at_ms"].as_u64(), j["submitted_at_ms"].as_u64()) {
                    (Some(e), _) => crate::human::local_time(e / 1000),
                    _ => "-".into(),
                },
            );
            row.push(s(&j["attempt"]));
            row.push(match j["array_job_id"].as_u64() {
                Some(a) => format!("{a}_{}", s(&j["array_task_id"])),
                None => "-".into(),
            });
            row.push(s(&j["dependency"]));
        }
        row
    });
    let mut header = vec!["ID", "TENANT", "NAME", "STATE", "ACCEL", "SUBMITTED"];
    if wide {
        header.extend(["ENDED", "ATTEMPT", "ARRAY", "DEPENDENCY"]);
    }
    let mut out = table(&header, rows);
    if let Some(c) = v["next_cursor"].as_str() {
        out.push_str(&format!("(more: --cursor {c})\n"));
    }
    out
}

/// A state as a word: `timed_out` → `timed out`.
fn state_word(v: &Value) -> String {
    s(v).replace('_', " ")
}

fn job_text(j: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "job {}  {}  tenant {}  {}\n",
        s(&j["id"]),
        state_word(&j["state"]),
        s(&j["tenant"]),
        j["name"].as_str().unwrap_or("")
    ));
    out.push_str(&format!("accelerators: {}\n", s(&j["accelerators"])));
    if let Some(a) = j["array_job_id"].as_u64() {
        out.push_str(&format!(
            "array: task {} of array {a} (GOSOK_ARRAY_TASK_ID={})\n",
            s(&j["array_task_id"]),
            s(&j["array_task_id"])
        ));
    }
    if let Some(d) = j["dependency"].as_str() {
        out.push_str(&format!("dependency: {d}\n"));
    }
    if let Some(t) = j["submitted_at_ms"].as_u64() {
        out.push_str(&format!("submitted: {}\n", crate::human::when(t)));
    }
    if let Some(t) = j["ended_at_ms"].as_u64() {
        let ran = j["submitted_at_ms"]
            .as_u64()
            .map(|s| {
                format!(
                    ", {} after submission",
                    crate::human::duration((t - s.min(t)) / 1000)
                )
            })
            .unwrap_or_default();
        out.push_str(&format!("ended: {}{ran}\n", crate::human::when(t)));
    }
    if let Some(w) = j.get("wait") {
        out.push_str(&format!("waiting: {}\n", s(&w["text"])));
        if let Some(p) = w["position"].as_u64() {
            out.push_str(&format!("queue position: {p}\n"));
        }
        if let Some(e) = w["estimated_start_s"].as_u64() {
            out.push_str(&format!(
                "estimated start: {}\n",
                crate::human::when(e.saturating_mul(1000))
            ));
        }
    }
    if let Some(r) = j["reason"].as_str() {
        out.push_str(&format!("reason: {r}\n"));
    }
    if let Some(p) = j["placement"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("placement:\n");
        for t in p {
            let devices: Vec<String> = t["devices"]
                .as_array()
                .map(|d| d.iter().map(s).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "  task {} on {}: {} devices {}\n",
                s(&t["task"]),
                s(&t["node"]),
                s(&t["model"]),
                devices.join(",")
            ));
        }
    }
    if let Some(c) = j["command"].as_array().filter(|c| !c.is_empty()) {
        // A batch script's text is shown by its size, not line by line.
        let c: Vec<String> = c
            .iter()
            .map(|a| match a.as_str() {
                Some(t) if t.contains('\n') => format!("<script of {} lines>", t.lines().count()),
                _ => s(a),
            })
            .collect();
        out.push_str(&format!("command: {}\n", c.join(" ")));
    }
    match j["workdir"].as_str() {
        Some(w) => out.push_str(&format!("workdir: {w}\n")),
        None if j.get("workdir").is_some() => {
            out.push_str("workdir: the agent's own directory for the task\n")
        }
        None => {}
    }
    if let Some(ev) = j["events"].as_array() {
        out.push_str("events:\n");
        for e in ev {
            out.push_str(&format!(
                "  {}  {:>8}  {} {}\n",
                e["at_ms"]
                    .as_u64()
                    .map_or("-".into(), |t| crate::human::local_time(t / 1000)),
                ago(&e["at_ms"]),
                state_word(&e["event"]),
                e["detail"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// What `gosok submit FILE` read: a job spec, or a batch script and its directives.
enum JobFile {
    Spec(Value),
    Script {
        /// The script's absolute path (run as the command).
        path: PathBuf,
        directives: Box<crate::batch_script::Directives>,
    },
}

/// Reads a job spec (JSON, TOML or YAML, by extension; `-` is standard input, JSON or YAML)
/// or a batch script into what the API takes.
fn read_job_file(arg: &str) -> anyhow::Result<JobFile> {
    let (name, text) = if arg == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .context("cannot read the job spec from standard input")?;
        ("<stdin>".to_string(), t)
    } else {
        let t = std::fs::read_to_string(arg).with_context(|| format!("cannot read {arg}"))?;
        (arg.to_string(), t)
    };
    let ext = std::path::Path::new(arg)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let spec = match ext.as_str() {
        "toml" => {
            let v: toml::Value =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            serde_json::to_value(v)?
        }
        "yaml" | "yml" => yaml(&name, &text)?,
        "json" => json_spec(&name, &text)?,
        _ if arg != "-" && crate::batch_script::is_script(&text) => {
            let directives = crate::batch_script::parse(&name, &text)?;
            let path = std::path::absolute(arg).with_context(|| format!("cannot resolve {arg}"))?;
            return Ok(JobFile::Script {
                path,
                directives: Box::new(directives),
            });
        }
        // Standard input or another extension: JSON if it looks like it, else YAML.
        _ if text.trim_start().starts_with('{') => json_spec(&name, &text)?,
        _ => yaml(&name, &text)?,
    };
    Ok(JobFile::Spec(spec))
}

fn json_spec(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{name}:{}:{}: {e}", e.line(), e.column()))
}

fn yaml(name: &str, text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(l) => anyhow::anyhow!("{name}:{}:{}: {e}", l.line(), l.column()),
        None => anyhow::anyhow!("{name}: {e}"),
    })?;
    if !v.is_object() {
        bail!("{name}: a job spec is a mapping (groups, name, command, ...)");
    }
    Ok(v)
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Submit(a) => submit(&a)?,
        Command::Jobs(a) => {
            let cl = Client::new(&a.c)?;
            let mut q = vec![format!("limit={}", a.limit)];
            if let Some(x) = &a.state {
                q.push(format!("state={}", enc(x)));
            }
            if let Some(x) = &a.tenant {
                q.push(format!("tenant={}", enc(x)));
            }
            if let Some(x) = &a.name {
                q.push(format!("name={}", enc(x)));
            }
            if let Some(x) = &a.cursor {
                q.push(format!("cursor={}", enc(x)));
            }
            let v = cl.get(&format!("/v1/jobs?{}", q.join("&")))?;
            let wide = a.c.output == Output::Wide;
            cl.print(&v, |v| jobs_table(v, wide));
        }
        Command::Show(a) => {
            let cl = Client::new(&a.c)?;
            let v = cl.get(&format!("/v1/jobs/{}", a.id))?;
            cl.print(&v, job_text);
        }
        Command::Cancel(a) => {
            let cl = Client::new(&a.c)?;
            let ids = if a.ids.is_empty() {
                if a.state.is_none() && a.name.is_none() {
                    bail!(
                        "give job ids (gosok cancel 3 4), or choose jobs with --state and --name"
                    );
                }
                matching_jobs(
                    &cl,
                    a.state.as_deref(),
                    a.name.as_deref(),
                    a.tenant.as_deref(),
                )?
            } else {
                if a.state.is_some() || a.name.is_some() || a.tenant.is_some() {
                    bail!("give either job ids or --state/--name/--tenant, not both");
                }
                a.ids.clone()
            };
            each_job(&cl, &ids, "cancel", &json!({}))?;
        }
        Command::Hold(a) => each_job(&Client::new(&a.c)?, &a.ids, "hold", &json!({}))?,
        Command::Release(a) => each_job(&Client::new(&a.c)?, &a.ids, "release", &json!({}))?,
        Command::Requeue(a) => each_job(
            &Client::new(&a.c)?,
            &a.ids,
            "requeue",
            &json!({"hold": a.hold}),
        )?,
        Command::Catalog(a) => {
            let cl = Client::new(&a.c)?;
            let v = cl.get("/v1/catalog")?;
            let wide = a.c.output == Output::Wide;
            cl.print(&v, |v| catalog_table(v, wide));
        }
        Command::Queue(a) => {
            let cl = Client::new(&a.c)?;
            let path = match a.limit {
                Some(l) => format!("/v1/queue?limit={l}"),
                None => "/v1/queue".into(),
            };
            let v = cl.get(&path)?;
            cl.print(&v, |v| {
                let rows = rows_of(v, "jobs", |j| {
                    vec![
                        s(&j["position"]),
                        s(&j["id"]),
                        s(&j["tenant"]),
                        s(&j["accelerators"]),
                        s(&j["text"]),
                    ]
                });
                table(&["POS", "ID", "TENANT", "ACCEL", "WAITING FOR"], rows)
            });
        }
        Command::Nodes(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                Some(NodeAction::Drain { node }) => {
                    let v = cl.post(&format!("/v1/nodes/{}/drain", enc(&node)), &json!({}))?;
                    cl.print(&v, |n| {
                        format!("node {}: {}\n", s(&n["name"]), s(&n["state"]))
                    });
                }
                Some(NodeAction::Undrain { node }) => {
                    let v = cl.post(&format!("/v1/nodes/{}/undrain", enc(&node)), &json!({}))?;
                    cl.print(&v, |n| {
                        format!("node {}: {}\n", s(&n["name"]), s(&n["state"]))
                    });
                }
                None => {
                    let v = cl.get("/v1/nodes")?;
                    cl.print(&v, |v| {
                        let rows = rows_of(v, "nodes", |n| {
                            vec![
                                s(&n["name"]),
                                s(&n["site"]),
                                s(&n["rack"]),
                                s(&n["state"]),
                                s(&n["model"]),
                                format!(
                                    "{}/{}",
                                    s(&n["accelerators_allocated"]),
                                    s(&n["accelerators"])
                                ),
                                s(&n["tasks"]),
                                n["isolation"].as_str().unwrap_or("-").to_string(),
                                // Which agent holds it, and under which epoch (operators see it).
                                match n["agent"]["epoch"].as_u64() {
                                    Some(e) if n["agent"]["lost"] == true => {
                                        format!("lost (epoch {e})")
                                    }
                                    Some(e) => format!("{} (epoch {e})", s(&n["agent"]["agent"])),
                                    None => "-".into(),
                                },
                            ]
                        });
                        table(
                            &[
                                "NAME",
                                "SITE",
                                "RACK",
                                "STATE",
                                "MODEL",
                                "ALLOC",
                                "TASKS",
                                "ISOLATION",
                                "AGENT",
                            ],
                            rows,
                        )
                    });
                }
            }
        }
        Command::Sites(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                Some(SiteAction::SetBudget {
                    site,
                    power_budget_mw,
                }) => {
                    let v = cl.patch(
                        &format!("/v1/sites/{}", enc(&site)),
                        &json!({"power_budget_mw": power_budget_mw}),
                    )?;
                    cl.print(&v, |v| {
                        let mut out = format!("site {site}: budget {power_budget_mw} MW\n");
                        for d in v["shed"].as_array().into_iter().flatten() {
                            out.push_str(&format!(
                                "shed {} job(s): draw {} W -> {} W{}\n",
                                d["jobs"].as_array().map_or(0, |j| j.len()),
                                s(&d["draw_before_w"]),
                                s(&d["draw_after_w"]),
                                if d["still_over"].as_bool() == Some(true) {
                                    " (still over budget: non-preemptible work; an operator must act)"
                                } else {
                                    ""
                                }
                            ));
                        }
                        out
                    });
                }
                None => {
                    let v = cl.get("/v1/sites")?;
                    cl.print(&v, |v| {
                        let rows = rows_of(v, "sites", |x| {
                            let draw = x["power_draw_w"].as_f64().unwrap_or(0.0);
                            let budget = x["power_budget_w"].as_f64().unwrap_or(0.0);
                            vec![
                                s(&x["name"]),
                                s(&x["region"]),
                                s(&x["jurisdiction"]),
                                format!("{:.3}/{:.3} MW", draw / 1e6, budget / 1e6),
                                format!(
                                    "{}/{}",
                                    s(&x["accelerators_allocated"]),
                                    s(&x["accelerators"])
                                ),
                            ]
                        });
                        table(&["NAME", "REGION", "JURIS", "POWER", "ACCEL"], rows)
                    });
                }
            }
        }
        Command::Tenants(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                Some(TenantAction::Create {
                    name,
                    tier,
                    weight,
                    share_cap,
                }) => {
                    let mut t = json!({"name": name, "tier": tier});
                    if let Some(w) = weight {
                        t["weight"] = json!(w);
                    }
                    if let Some(c) = share_cap {
                        t["share_cap"] = json!(c);
                    }
                    let v = cl.post("/v1/tenants", &t)?;
                    cl.print(&v, |t| format!("created tenant {}\n", s(&t["name"])));
                }
                Some(TenantAction::Update {
                    name,
                    weight,
                    share_cap,
                    max_priority,
                    max_pending_jobs,
                    max_job_bytes,
                    max_stored_bytes,
                }) => {
                    let mut t = json!({});
                    if let Some(w) = weight {
                        t["weight"] = json!(w);
                    }
                    if let Some(c) = share_cap {
                        t["share_cap"] = json!(c);
                    }
                    if let Some(p) = max_priority {
                        t["max_priority"] = json!(p);
                    }
                    for (k, v) in [
                        ("max_pending_jobs", max_pending_jobs),
                        ("max_job_bytes", max_job_bytes),
                        ("max_stored_bytes", max_stored_bytes),
                    ] {
                        if let Some(v) = v {
                            t[k] = json!(v);
                        }
                    }
                    let v = cl.patch(&format!("/v1/tenants/{}", enc(&name)), &t)?;
                    cl.print(&v, |t| format!("updated tenant {}\n", s(&t["name"])));
                }
                None => {
                    let v = cl.get("/v1/tenants")?;
                    cl.print(&v, |v| {
                        let rows = rows_of(v, "tenants", |t| {
                            vec![
                                s(&t["name"]),
                                s(&t["tier"]),
                                s(&t["weight"]),
                                s(&t["share_cap"]),
                                s(&t["pending"]),
                                s(&t["running_accelerators"]),
                                s(&t["share"]),
                                crate::usage_cmd::quota_use(&t["quota_use"]),
                                s(&t["balance_accelerator_hours"]),
                            ]
                        });
                        table(
                            &[
                                "NAME",
                                "TIER",
                                "WEIGHT",
                                "SHARE CAP",
                                "PENDING",
                                "RUNNING ACCEL",
                                "SHARE",
                                "QUOTA USE",
                                "BALANCE (ACCEL-H)",
                            ],
                            rows,
                        )
                    });
                }
            }
        }
        Command::Logs(a) => {
            let cl = Client::new(&a.c)?;
            logs(&cl, &a)?;
        }
        Command::Token(a) => {
            let cl = Client::new(&a.c)?;
            match a.action {
                TokenAction::Create {
                    tenant: None,
                    agent: true,
                } => {
                    let v = cl.post("/v1/agent-tokens", &json!({}))?;
                    cl.print(&v, |t| {
                        format!(
                            "agent token {} (shown once; keep it safe):\n{}\n",
                            s(&t["id"]),
                            s(&t["token"])
                        )
                    });
                }
                TokenAction::Create { tenant, .. } => {
                    let tenant = tenant.unwrap_or_default();
                    let v = cl.post(&format!("/v1/tenants/{}/tokens", enc(&tenant)), &json!({}))?;
                    cl.print(&v, |t| {
                        format!(
                            "token {} for tenant {} (shown once; keep it safe):\n{}\n",
                            s(&t["id"]),
                            s(&t["tenant"]),
                            s(&t["token"])
                        )
                    });
                }
                TokenAction::Revoke { id } => {
                    let v = cl.post(&format!("/v1/tokens/{}/revoke", enc(&id)), &json!({}))?;
                    cl.print(&v, |t| format!("revoked token {}\n", s(&t["id"])));
                }
                TokenAction::List { tenant } => {
                    let v = cl.get(&format!("/v1/tenants/{}/tokens", enc(&tenant)))?;
                    cl.print(&v, |v| {
                        let rows = rows_of(v, "tokens", |t| {
                            vec![
                                s(&t["id"]),
                                s(&t["tenant"]),
                                ago(&t["created_at_ms"]),
                                s(&t["revoked"]),
                            ]
                        });
                        table(&["ID", "TENANT", "CREATED", "REVOKED"], rows)
                    });
                }
            }
        }
        Command::Apply(a) => {
            let cl = Client::new(&a.c)?;
            let text = std::fs::read(&a.file)
                .with_context(|| format!("cannot read {}", a.file.display()))?;
            let path = if a.dry_run {
                "/v1/topology?dry_run=true"
            } else {
                "/v1/topology"
            };
            let v = cl
                .call("PUT", path, Some(("application/toml", text)), &[])
                .with_context(|| format!("applying {}", a.file.display()))?;
            cl.print(&v, |v| {
                let changed = v["changed"].as_array().cloned().unwrap_or_default();
                if changed.is_empty() {
                    return "no changes\n".into();
                }
                let mut out = String::new();
                for c in changed {
                    out.push_str(&format!(
                        "{}{}\n",
                        if a.dry_run { "would: " } else { "" },
                        s(&c)
                    ));
                }
                out
            });
        }
        Command::Export(a) => {
            let cl = Client::new(&a.c)?;
            let v = cl.get("/v1/topology")?;
            match a.c.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table | Output::Wide | Output::Csv => {
                    let spec: gosok_model::ClusterSpec = serde_json::from_value(v)
                        .context("the server's topology is not a cluster file")?;
                    print!("{}", spec.to_toml());
                }
            }
        }
    }
    Ok(())
}

/// `gosok submit`: a spec file, a batch script, or flags.
fn submit(a: &SubmitArgs) -> anyhow::Result<()> {
    use crate::batch_script::set_accelerators;
    let cl = Client::new(&a.c)?;
    let file = a.file.as_deref().map(read_job_file).transpose()?;
    let mut control = json!({});
    let mut spec = match file {
        Some(JobFile::Spec(v)) => {
            if a.accelerators.is_some() || !a.models.is_empty() || a.replicas.is_some() {
                bail!("give either a spec file or --accelerators/--model/--replicas, not both");
            }
            v
        }
        Some(JobFile::Script {
            path,
            directives: d,
        }) => {
            let shown = a.file.as_deref().unwrap_or_default();
            for (line, what) in &d.ignored {
                eprintln!("{shown}:{line}: ignored {what}");
            }
            let mut spec = json!({"groups": [d.group()]});
            for (k, v) in [
                ("name", d.name.as_ref().map(|v| json!(v))),
                ("priority", d.priority.as_ref().map(|v| json!(v))),
                ("runtime_limit_s", d.limit_s.map(|v| json!(v))),
                ("runtime_estimate_s", d.estimate_s.map(|v| json!(v))),
                ("workdir", d.workdir.as_ref().map(|w| json!(resolve_dir(w)))),
            ] {
                if let Some(v) = v {
                    spec[k] = v;
                }
            }
            for (k, v) in [("array", &d.array), ("dependency", &d.dependency)] {
                if let Some(v) = v {
                    control[k] = json!(v);
                }
            }
            if d.hold {
                control["hold"] = json!(true);
            }
            if !d.env.is_empty() {
                spec["env"] =
                    Value::Object(d.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
            }
            spec["command"] = json!(script_command(&path, &a.command)?);
            spec
        }
        None => json!({"groups": [{"replicas": 1}]}),
    };
    if let Some(g) = spec["groups"]
        .get_mut(0)
        .filter(|_| a.file.is_none() || spec_is_script(a))
    {
        if let Some(r) = a.replicas {
            g["replicas"] = json!(r);
        }
        if let Some(n) = a.accelerators {
            crate::batch_script::check_accelerators(n)
                .map_err(|e| anyhow::anyhow!("--accelerators {e}"))?;
            set_accelerators(g, n);
        }
        if !a.models.is_empty() {
            g["models"] = json!(a.models);
        }
    }
    if let Some(n) = &a.name {
        spec["name"] = json!(n);
    }
    if let Some(p) = &a.priority {
        spec["priority"] = json!(p);
    }
    if let Some(e) = a.estimate_s {
        spec["runtime_estimate_s"] = json!(e);
    }
    if let Some(l) = a.limit_s {
        spec["runtime_limit_s"] = json!(l);
    }
    if let Some(p) = &a.on_task_failure {
        spec["on_task_failure"] = json!(p);
    }
    if !a.command.is_empty() && !spec_is_script(a) {
        spec["command"] = json!(a.command);
    }
    if !a.env.is_empty() {
        let env = spec
            .as_object_mut()
            .context("a job spec is an object")?
            .entry("env")
            .or_insert_with(|| json!({}));
        for (k, v) in &a.env {
            env[k] = json!(v);
        }
    }
    if let Some(w) = &a.workdir {
        spec["workdir"] = json!(resolve_dir(w));
    } else if spec.get("workdir").is_none()
        && spec.get("command").is_some()
        && cl.is_local()
        && let Ok(here) = std::env::current_dir()
    {
        // The agents of a controller on this host (`gosok up`) share this file system:
        // run where the user is, as Slurm does.
        spec["workdir"] = json!(here.display().to_string());
    }
    for (k, v) in [("array", &a.array), ("dependency", &a.dependency)] {
        if let Some(v) = v {
            control[k] = json!(v);
        }
    }
    if a.hold {
        control["hold"] = json!(true);
    }
    if let (Some(m), Some(c)) = (spec.as_object_mut(), control.as_object()) {
        for (k, v) in c {
            m.insert(k.clone(), v.clone());
        }
    }
    if spec.get("command").is_none() {
        eprintln!(
            "warning: the job has no command: node agents have nothing to run (give one after `--`, or `command` in the spec)"
        );
    }
    let path = match &a.tenant {
        Some(t) => format!("/v1/jobs?tenant={}", enc(t)),
        None => "/v1/jobs".into(),
    };
    let key = a.idempotency_key.clone();
    let headers: Vec<(&str, &str)> = key
        .as_deref()
        .map(|k| vec![("Idempotency-Key", k)])
        .unwrap_or_default();
    let v = cl.call(
        "POST",
        &path,
        Some(("application/json", serde_json::to_vec(&spec)?)),
        &headers,
    )?;
    let array = spec["array"].as_str().map(str::to_string);
    cl.print(&v, |j| match &array {
        Some(a) => format!(
            "submitted job array {} ({a}): jobs {} on, one per index ({})\n",
            s(&j["id"]),
            s(&j["id"]),
            state_word(&j["state"])
        ),
        None => format!(
            "submitted job {} ({})\n",
            s(&j["id"]),
            state_word(&j["state"])
        ),
    });
    Ok(())
}

fn spec_is_script(a: &SubmitArgs) -> bool {
    a.file.as_deref().is_some_and(|f| {
        f != "-"
            && !matches!(
                std::path::Path::new(f)
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("json" | "toml" | "yaml" | "yml")
            )
            && std::fs::read_to_string(f).is_ok_and(|t| crate::batch_script::is_script(&t))
    })
}

/// A relative directory resolved against this one; an absolute one as it is.
fn resolve_dir(w: &str) -> String {
    match std::path::absolute(w) {
        Ok(p) => {
            // `.` and `..` read as the user means them.
            let mut out = PathBuf::new();
            for c in p.components() {
                match c {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    c => out.push(c),
                }
            }
            out.display().to_string()
        }
        Err(_) => w.to_string(),
    }
}

/// What runs a batch script: a shell script's text itself (as `sh -c TEXT SCRIPT ARGS`), so
/// that later edits of the file do not change a submitted job, as with Slurm; another
/// interpreter (`#!/usr/bin/env python3`) gets the script's path.
fn script_command(path: &std::path::Path, args: &[String]) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let shebang: Vec<String> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_else(|| vec!["/bin/sh".to_string()]);
    let interp = shebang.last().map(String::as_str).unwrap_or("sh");
    let base = interp.rsplit('/').next().unwrap_or(interp);
    let shell = matches!(base, "sh" | "bash" | "dash" | "zsh" | "ksh");
    let mut cmd = shebang.clone();
    if shell {
        cmd.push("-c".into());
        cmd.push(text);
        cmd.push(path.display().to_string());
    } else {
        cmd.push(path.display().to_string());
    }
    cmd.extend(args.iter().cloned());
    Ok(cmd)
}

/// Ids of the caller's jobs that have not ended, matching the filters (every page).
fn matching_jobs(
    cl: &Client,
    state: Option<&str>,
    name: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec!["limit=1000".to_string()];
        if let Some(x) = state {
            q.push(format!("state={}", enc(x)));
        }
        if let Some(x) = name {
            q.push(format!("name={}", enc(x)));
        }
        if let Some(x) = tenant {
            q.push(format!("tenant={}", enc(x)));
        }
        if let Some(c) = &cursor {
            q.push(format!("cursor={}", enc(c)));
        }
        let v = cl.get(&format!("/v1/jobs?{}", q.join("&")))?;
        for j in v["jobs"].as_array().into_iter().flatten() {
            if matches!(j["state"].as_str(), Some("pending" | "held" | "running"))
                && let Some(id) = j["id"].as_u64()
            {
                ids.push(id);
            }
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// POSTs `/v1/jobs/ID/ACTION` for each id; says what became of each, and fails (after
/// trying them all) if any was refused.
fn each_job(cl: &Client, ids: &[u64], action: &str, body: &Value) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut failed = 0;
    for &id in ids {
        match cl.post(&format!("/v1/jobs/{id}/{action}"), body) {
            Ok(j) => {
                if cl.output != Output::Json {
                    println!("job {id}: {}", state_word(&j["state"]));
                }
                results.push(j);
            }
            Err(e) => {
                failed += 1;
                eprintln!("job {id}: {e:#}");
                results.push(json!({"id": id, "error": format!("{e:#}")}));
            }
        }
    }
    if ids.is_empty() && cl.output != Output::Json {
        println!("no jobs matched");
    }
    if cl.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"jobs": results}))?
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} job(s) could not be {}",
            ids.len(),
            past(action)
        );
    }
    Ok(())
}

fn past(action: &str) -> &'static str {
    match action {
        "cancel" => "cancelled",
        "hold" => "held",
        "release" => "released",
        _ => "requeued",
    }
}

fn catalog_table(v: &Value, wide: bool) -> String {
    let rows = rows_of(v, "models", |m| {
        let mut row = vec![
            s(&m["name"]),
            s(&m["vendor"]),
            s(&m["class"]),
            format!("{} GiB", s(&m["hbm_gib"])),
            format!("{} W", s(&m["board_power_w"])),
            format!("{:.2}", m["relative_throughput"].as_f64().unwrap_or(0.0)),
            if m["shareable"] == true { "yes" } else { "no" }.into(),
        ];
        if wide {
            let aliases: Vec<String> = m["aliases"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            row.push(if aliases.is_empty() {
                "-".into()
            } else {
                aliases.join(",")
            });
            row.push(s(&m["source"]));
        }
        row
    });
    let mut header = vec![
        "NAME",
        "VENDOR",
        "CLASS",
        "HBM",
        "POWER",
        "THROUGHPUT",
        "SHAREABLE",
    ];
    if wide {
        header.extend(["ALIASES", "SOURCE"]);
    }
    let mut out = table(&header, rows);
    out.push_str("(model names match in any case; THROUGHPUT is relative to H100 = 1.00; a shareable device takes --accelerators 0.5)\n");
    out
}
