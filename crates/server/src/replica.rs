//! Several controller replicas over one PostgreSQL store: one leads, the others follow.
//!
//! Every replica replays the log and then follows it (polling every `TAIL_EVERY`), so that it
//! holds a warm engine. The leader is whoever holds the lease row (see
//! `gosok_store::lease`): a follower that finds the lease expired takes it with the next
//! term, applies the rest of the log, and starts serving as the controller over the core it
//! already has, its appends fenced by that term. The leader renews every quarter of the
//! lease; it stops leading as soon as its own count of the lease runs out (measured from
//! before the renewal that granted it), when a renewal finds its term over, or when an append
//! is refused, and then replays from the store as a follower. Its acknowledged writes are all
//! in the log, so whatever it held in memory beyond them is dropped.
//!
//! One HTTP server serves the replica's whole life; what answers depends on the role:
//! the leader's full API, or a follower that forwards every request to the leader (so a
//! client or agent may talk to any replica), answering 503 while no replica leads.
//! A forwarded request keeps its Host (the console's origin check compares it with the
//! browser's Origin) and every header but those of one hop; the leader's answer comes back
//! as it is sent — every Set-Cookie, and a live stream event by event.
//!
//! `/healthz` and `/readyz` answer anyone, with nothing but whether the replica is up
//! (and leads); `/v1/replica` (the role, term, positions and lag of every replica, their
//! URLs, the store and its errors) and `/healthz`'s details need an admin token. A follower
//! checks that token against the admin tokens of the log it has applied.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gosok_store::{PgStore, SqliteStore, Store};
use serde_json::{Value, json};

use crate::config::{Config, DataDir};
use crate::core::Core;
use crate::entry::Entry;
use crate::{App, Parts, ReplayStats, api, assemble, http, replay, tick_loop, unix_ms};

/// Where the log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `gosok.db` in the data directory.
    Sqlite,
    Postgres(String),
}

impl StoreKind {
    pub fn parse(s: &str) -> anyhow::Result<StoreKind> {
        if s == "sqlite" {
            Ok(StoreKind::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            s.parse::<gosok_store::PgConfig>()
                .map_err(|e| anyhow::anyhow!("store: {}: {e}", PgStore::display_url(s)))?;
            Ok(StoreKind::Postgres(s.to_string()))
        } else {
            anyhow::bail!(
                "store: {s:?} is neither \"sqlite\" nor a PostgreSQL URL (postgres://USER@HOST:PORT/DB)"
            )
        }
    }

    pub fn open(&self, dir: &Path) -> anyhow::Result<Box<dyn Store>> {
        Ok(match self {
            StoreKind::Sqlite => Box::new(SqliteStore::open(&DataDir(dir.to_path_buf()).db())?),
            StoreKind::Postgres(url) => Box::new(
                PgStore::open(url)
                    .with_context(|| format!("cannot open {}", PgStore::display_url(url)))?,
            ),
        })
    }

    /// Names the store in messages (without a password).
    pub fn describe(&self, dir: &Path) -> String {
        match self {
            StoreKind::Sqlite => DataDir(dir.to_path_buf()).db().display().to_string(),
            StoreKind::Postgres(url) => PgStore::display_url(url),
        }
    }

    /// The `--store` flag that names it again (empty for the default).
    pub fn flag(&self) -> String {
        match self {
            StoreKind::Sqlite => String::new(),
            StoreKind::Postgres(url) => format!(" --store {}", PgStore::display_url(url)),
        }
    }
}

/// How often a follower reads new log records.
const TAIL_EVERY: Duration = Duration::from_millis(20);
/// How often a replica records itself in the replicas table.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Starting,
    Follower,
    Leader,
    /// The store cannot be read: nothing is served but health and status.
    Unavailable,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Follower => "follower",
            Role::Leader => "leader",
            Role::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone)]
struct Status {
    role: Role,
    term: u64,
    /// The leader's advertised URL, while a live lease names one.
    leader_url: Option<String>,
    applied_seq: u64,
    /// The log's end as last read.
    store_seq: u64,
    /// For the last record applied while following: how long after it was written.
    lag_ms: u64,
    error: Option<String>,
    replicas: Vec<gosok_store::ReplicaRow>,
}

struct Shared {
    id: String,
    advertise: String,
    url: String,
    dir: PathBuf,
    cfg: Config,
    status: Mutex<Status>,
    /// What answers requests now: the leader's API, or the follower's forwarding.
    inner: RwLock<Router>,
    /// While this replica leads: its controller, whose tokens are the truth.
    leading: RwLock<Option<Arc<App>>>,
    /// The admin tokens' digests in the log as last applied while following.
    admins: RwLock<HashSet<[u8; 32]>>,
    forward: ureq::Agent,
    stopping: AtomicBool,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_router(&self, r: Router) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = r;
    }

    fn set_role(&self, role: Role, error: Option<String>) {
        let mut s = self.status();
        s.role = role;
        s.error = error;
    }

    fn set_leading(&self, app: Option<Arc<App>>) {
        *self.leading.write().unwrap_or_else(PoisonError::into_inner) = app;
    }

    fn note_admins(&self, core: &Core) {
        *self.admins.write().unwrap_or_else(PoisonError::into_inner) = core.admin_token_digests();
    }

    /// The refusal of a request without an admin token (None: it has one). The leader's API
    /// decides while this replica leads, else the admin tokens of the log as followed.
    fn refuse_unless_admin(&self, headers: &HeaderMap) -> Option<Response> {
        let leading = self
            .leading
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(app) = leading {
            return api::principal(&app, headers)
                .and_then(|p| p.require_admin())
                .err()
                .map(IntoResponse::into_response);
        }
        // A follower has no core to ask: it knows the admin tokens of the log it applied.
        let digest = match crate::auth::bearer_digest(headers) {
            Ok(d) => d,
            Err(e) => return Some(e.into_response()),
        };
        let known = self
            .admins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&digest);
        (!known).then(|| {
            crate::error::ApiError::unauthenticated(
                "unknown, revoked or not an admin token: this needs an operator (admin) token",
            )
            .into_response()
        })
    }
}

/// Serves as one replica over the PostgreSQL store `cfg.store` until `stop` completes.
/// `ready` hears the bound address once listening.
pub async fn run(
    dir: &Path,
    cfg: Config,
    ready: impl FnOnce(std::net::SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.check()?;
    let StoreKind::Postgres(url) = StoreKind::parse(&cfg.store)? else {
        anyhow::bail!("store: replicas need a PostgreSQL store");
    };
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let advertise = cfg
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let mut id = [0u8; 6];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let shared = Arc::new(Shared {
        id,
        advertise,
        url,
        dir: dir.to_path_buf(),
        forward: ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .redirects(0)
            .build(),
        status: Mutex::new(Status {
            role: Role::Starting,
            term: 0,
            leader_url: None,
            applied_seq: 0,
            store_seq: 0,
            lag_ms: 0,
            error: None,
            replicas: Vec::new(),
        }),
        inner: RwLock::new(follower_router()),
        leading: RwLock::new(None),
        admins: RwLock::new(HashSet::new()),
        stopping: AtomicBool::new(false),
        cfg,
    });
    let tls = match (&shared.cfg.tls_cert, &shared.cfg.tls_key) {
        (Some(c), Some(k)) => Some(http::tls_acceptor(c, k)?),
        _ => None,
    };
    let outer = Router::new()
        .route("/readyz", get(readyz))
        .route("/v1/replica", get(replica_status))
        .fallback(dispatch)
        .with_state(shared.clone());
    let stats = Arc::new(http::Stats::default());
    let limits = http::Limits::of(&shared.cfg);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_rx2 = stop_rx.clone();
    let server = tokio::spawn(async move {
        http::serve(
            listener,
            tls,
            outer,
            limits,
            stats,
            async move {
                let _ = stop_rx2.wait_for(|s| *s).await;
            },
            Duration::from_secs(5),
        )
        .await
    });
    ready(addr);
    let rt = tokio::runtime::Handle::current();
    let sh = shared.clone();
    let roles = tokio::task::spawn_blocking(move || lifecycle(sh, rt));
    stop.await;
    shared.stopping.store(true, Ordering::SeqCst);
    let r = roles.await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    r.context("the replica's role loop panicked")?
}

/// Follows, leads when it can, follows again when it must, until told to stop.
fn lifecycle(sh: Arc<Shared>, rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    while !sh.stopping.load(Ordering::SeqCst) {
        sh.set_router(follower_router());
        let Some(won) = follow(&sh) else {
            continue;
        };
        lead(&sh, &rt, won);
    }
    Ok(())
}

/// A won election: the caught-up core, the term, and when the lease was asked for (it
/// lasts from no earlier than that).
struct Won {
    core: Core,
    last: u64,
    stats: ReplayStats,
    term: u64,
    asked: Instant,
}

/// Replays, then applies new records as they come until this replica wins the lease
/// or is told to stop (None). A store that cannot be read makes the replica unavailable
/// and it starts over.
fn follow(sh: &Shared) -> Option<Won> {
    let lease_ms = sh.cfg.leader_lease_ms;
    let fail = |what: String| {
        tracing::warn!("replica: {what}");
        sh.set_role(Role::Unavailable, Some(what));
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut store = match PgStore::open(&sh.url) {
        Ok(s) => s,
        Err(e) => {
            fail(format!("cannot reach the store: {e}"));
            return None;
        }
    };
    let (mut core, mut last, stats) = match replay(&mut store, &sh.cfg) {
        Ok(x) => x,
        Err(e) => {
            fail(format!("cannot replay the log: {e:#}"));
            return None;
        }
    };
    {
        let mut s = sh.status();
        s.applied_seq = last;
        s.store_seq = last;
    }
    sh.note_admins(&core);
    sh.set_role(Role::Follower, None);
    let mut beat = Instant::now() - HEARTBEAT_EVERY;
    while !sh.stopping.load(Ordering::SeqCst) {
        let mut asked = Instant::now();
        let step = (|| -> anyhow::Result<Option<u64>> {
            tail(&mut store, &mut core, &mut last, sh)?;
            let lease = store.lease()?;
            {
                let mut s = sh.status();
                s.term = lease.term;
                s.leader_url = lease.live().then(|| lease.url.clone());
            }
            if beat.elapsed() >= HEARTBEAT_EVERY {
                beat = Instant::now();
                store.heartbeat(&sh.id, &sh.advertise, "follower", last)?;
                sh.status().replicas = store.replicas()?;
            }
            if lease.live() {
                return Ok(None);
            }
            asked = Instant::now();
            Ok(store.acquire_lease(&sh.id, &sh.advertise, lease_ms)?)
        })();
        match step {
            Ok(Some(term)) => {
                // Nothing can be appended under an older term any more: read to the end.
                if let Err(e) = tail(&mut store, &mut core, &mut last, sh) {
                    fail(format!(
                        "cannot read the log after winning term {term}: {e:#}"
                    ));
                    return None;
                }
                tracing::info!(term, seq = last, "replica: leading");
                return Some(Won {
                    core,
                    last,
                    stats,
                    term,
                    asked,
                });
            }
            Ok(None) => std::thread::sleep(TAIL_EVERY),
            Err(e) => {
                fail(format!("the store: {e:#}"));
                return None;
            }
        }
    }
    None
}

/// Applies the records after `last`.
fn tail(store: &mut PgStore, core: &mut Core, last: &mut u64, sh: &Shared) -> anyhow::Result<()> {
    let mut newest_at = None;
    store.scan(*last, &mut |r| {
        let entry: Entry = serde_json::from_slice(&r.body).map_err(|e| {
            gosok_store::StoreError::Corrupt(format!("record {} cannot be read: {e}", r.seq))
        })?;
        if let Err(e) = core.apply(r.seq, r.at_ms, &entry) {
            tracing::warn!(
                seq = r.seq,
                kind = entry.kind(),
                "follower refused: {}",
                e.message
            );
        }
        core.set_seq(r.seq);
        *last = r.seq;
        newest_at = Some(r.at_ms);
        Ok(())
    })?;
    if newest_at.is_some() {
        sh.note_admins(core);
    }
    let mut s = sh.status();
    s.applied_seq = *last;
    s.store_seq = *last;
    if let Some(at) = newest_at {
        s.lag_ms = unix_ms().saturating_sub(at);
    }
    Ok(())
}

/// Serves as the controller under `term` until the lease is lost, the log refuses an
/// append, or the replica is told to stop.
fn lead(sh: &Arc<Shared>, rt: &tokio::runtime::Handle, won: Won) {
    let Won {
        core,
        last,
        stats,
        term,
        asked: epoch,
    } = won;
    let lease = Duration::from_millis(sh.cfg.leader_lease_ms);
    // Counted from before the acquiring UPDATE was sent (PostgreSQL counts from when it ran,
    // later), less a margin for the clocks' rates: this replica stops leading before
    // PostgreSQL lets another one start.
    let margin = lease / 10;
    let valid_until_ms = Arc::new(AtomicU64::new((lease - margin).as_millis() as u64));
    let over = Arc::new(AtomicBool::new(false));
    let open = || PgStore::open(&sh.url).map(|s| Box::new(s) as Box<dyn Store>);
    let parts = (|| -> Result<Parts, gosok_store::StoreError> {
        Ok(Parts {
            core,
            last,
            stats,
            log: Box::new(PgStore::fenced(&sh.url, term)?),
            reader: open()?,
            snapshots: open()?,
        })
    })();
    let parts = match parts {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("replica: cannot open the store to lead: {e}");
            sh.set_role(Role::Unavailable, Some(e.to_string()));
            return;
        }
    };
    let o = over.clone();
    let app = assemble(
        &sh.dir,
        sh.cfg.clone(),
        parts,
        Box::new(move |e| {
            tracing::warn!("replica: the log refused an append ({e}); stepping down");
            o.store(true, Ordering::SeqCst);
        }),
    );
    {
        let mut s = sh.status();
        s.role = Role::Leader;
        s.term = term;
        s.leader_url = Some(sh.advertise.clone());
        s.applied_seq = last;
        s.error = None;
    }
    sh.set_leading(Some(app.clone()));
    sh.set_router(api::router(app.clone()));
    let ticker = rt.spawn(tick_loop(app.clone()));
    let renewer = {
        let (sh, over, valid, app) = (
            sh.clone(),
            over.clone(),
            valid_until_ms.clone(),
            app.clone(),
        );
        std::thread::Builder::new()
            .name("gosok-lease".into())
            .spawn(move || renew(&sh, term, epoch, lease - margin, &valid, &over, &app))
    };
    if let Err(e) = renewer {
        tracing::warn!("replica: cannot start the lease renewer: {e}");
        over.store(true, Ordering::SeqCst);
    }
    let why = loop {
        if sh.stopping.load(Ordering::SeqCst) {
            break "stopping";
        }
        if over.load(Ordering::SeqCst) {
            break "its term is over";
        }
        if epoch.elapsed().as_millis() as u64 >= valid_until_ms.load(Ordering::SeqCst) {
            break "its lease ran out unrenewed";
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Stop acting as the leader first: from here requests are forwarded or refused.
    sh.set_router(follower_router());
    // The tokens as this replica's term left them, until the next replay says more; none if
    // its core is busy (a request may hold it, waiting on an unreachable store).
    match app.core.try_lock() {
        Ok(core) => sh.note_admins(&core),
        Err(_) => sh
            .admins
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear(),
    }
    sh.set_leading(None);
    sh.set_role(Role::Follower, None);
    sh.status().leader_url = None;
    over.store(true, Ordering::SeqCst);
    ticker.abort();
    if why == "stopping" {
        tracing::info!(term, "replica: stopping; giving up the lease");
        if let Err(e) = app.snapshots.at_shutdown(&app) {
            tracing::warn!("cannot write a snapshot at shutdown: {e:#}");
        }
        app.close_log();
        if let Ok(s) = PgStore::open(&sh.url) {
            let _ = s.release_lease(&sh.id, term);
        }
    } else {
        tracing::warn!(term, "replica: stepping down: {why}");
        // The writer may be blocked on a PostgreSQL that cannot be reached: let it finish
        // (or fail) on its own thread; whatever it had not made durable was not acknowledged.
        std::thread::spawn(move || drop(app));
    }
}

/// Renews the lease every quarter of it; records how long this replica may lead.
fn renew(
    sh: &Shared,
    term: u64,
    epoch: Instant,
    lease: Duration,
    valid_until_ms: &AtomicU64,
    over: &AtomicBool,
    app: &App,
) {
    let every = Duration::from_millis(sh.cfg.leader_lease_ms / 4);
    let mut store: Option<PgStore> = None;
    let mut beat = Instant::now() - HEARTBEAT_EVERY;
    while !over.load(Ordering::SeqCst) {
        let asked = epoch.elapsed();
        let s = match store.as_ref() {
            Some(s) => s,
            None => match PgStore::open(&sh.url) {
                Ok(s) => store.insert(s),
                Err(e) => {
                    tracing::warn!("replica: cannot reach the store to renew the lease: {e}");
                    std::thread::sleep(every / 4);
                    continue;
                }
            },
        };
        match s.renew_lease(&sh.id, term, sh.cfg.leader_lease_ms) {
            Ok(true) => {
                valid_until_ms.store((asked + lease).as_millis() as u64, Ordering::SeqCst);
                if beat.elapsed() >= HEARTBEAT_EVERY {
                    beat = Instant::now();
                    let seq = app.durable_seq();
                    let _ = s.heartbeat(&sh.id, &sh.advertise, "leader", seq);
                    let replicas = s.replicas().unwrap_or_default();
                    let mut st = sh.status();
                    st.applied_seq = seq;
                    st.store_seq = seq;
                    st.replicas = replicas;
                }
            }
            Ok(false) => {
                over.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!("replica: renewing the lease failed: {e}");
                store = None;
                continue;
            }
        }
        let next = asked + every;
        while epoch.elapsed() < next && !over.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---- HTTP ---------------------------------------------------------------------------------

/// Hands the request to what answers now.
async fn dispatch(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let mut r = sh
        .inner
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    // The follower's router needs the shared state; the leader's has its own.
    let mut req = req;
    req.extensions_mut().insert(sh.clone());
    match tower_service::Service::call(&mut r, req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

fn follower_router() -> Router {
    Router::new()
        .route("/healthz", get(follower_health))
        .fallback(forward)
}

fn error(status: StatusCode, code: &str, message: String, leader: Option<&str>) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}, "leader": leader})),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    if matches!(code, "no_leader" | "not_leader") {
        // Nothing was done: a client that knows other replicas may ask them.
        r.headers_mut()
            .insert("x-gosok-retry", HeaderValue::from_static("elsewhere"));
    }
    r
}

fn shared_of(req: &Request) -> Option<Arc<Shared>> {
    req.extensions().get::<Arc<Shared>>().cloned()
}

/// Anyone: whether this replica is up. With an admin token, also its role, the leader, the
/// term, how far it has applied the log, and what is wrong with its store.
async fn follower_health(req: Request) -> Response {
    let Some(sh) = shared_of(&req) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let s = sh.status().clone();
    let status = if s.role == Role::Unavailable {
        "degraded"
    } else {
        "ok"
    };
    // A probe that sends a token it should not is still told the replica is up.
    if sh.refuse_unless_admin(req.headers()).is_some() {
        return axum::Json(json!({ "status": status })).into_response();
    }
    axum::Json(json!({
        "status": status,
        "role": s.role.name(),
        "leader": s.leader_url,
        "term": s.term,
        "log_seq": s.applied_seq,
        "error": s.error,
    }))
    .into_response()
}

/// Headers not passed on: they describe one hop, not the request.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Bytes of the leader's answer read at once: a live event is sent on as soon as it comes.
const FORWARD_CHUNK: usize = 16 * 1024;

/// The leader's answer as it arrives: the head first, then its body in pieces.
type Head = Result<(u16, HeaderMap), String>;

/// A response body fed by the thread that reads the leader's answer.
struct Relayed(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| b.map(hyper::body::Frame::data)))
    }
}

/// Passes a request to the leader and its answer back.
async fn forward(req: Request) -> Response {
    let Some(sh) = shared_of(&req) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (role, leader) = {
        let s = sh.status();
        (s.role, s.leader_url.clone())
    };
    if req.headers().contains_key("x-gosok-forwarded-by") {
        // Another follower thought this one leads: its view is stale; let the client retry.
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "this replica does not lead (leadership is changing); retry".into(),
            leader.as_deref(),
        );
    }
    let Some(leader) = leader.filter(|l| *l != sh.advertise) else {
        let why = match role {
            Role::Unavailable => {
                "this controller cannot reach its store (PostgreSQL); writes are refused until it can"
            }
            _ => {
                "no controller replica leads at the moment (an election is under way); retry in a second"
            }
        };
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            why.into(),
            None,
        );
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, sh.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body exceeds {} bytes", sh.cfg.max_body_bytes),
                None,
            );
        }
    };
    let target = format!(
        "{leader}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let method = parts.method.clone();
    let headers = parts.headers.clone();
    let sh2 = sh.clone();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<Head>();
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(4);
    // ureq blocks: one thread per forwarded request, for as long as its answer streams.
    tokio::task::spawn_blocking(move || {
        let mut r = sh2.forward.request(method.as_str(), &target);
        for (k, v) in headers.iter() {
            if HOP.contains(&k.as_str()) {
                continue;
            }
            // The client's Host goes on as it was (ureq sends the leader's otherwise): the
            // console compares it with the browser's Origin.
            if let Ok(v) = v.to_str() {
                r = r.set(k.as_str(), v);
            }
        }
        r = r.set("x-gosok-forwarded-by", &sh2.id);
        let res = if bytes.is_empty() && !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            r.call()
        } else {
            r.send_bytes(&bytes)
        };
        let resp = match res {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => {
                let _ = head_tx.send(Err(format!("cannot reach the leader: {t}")));
                return;
            }
        };
        let mut out = HeaderMap::new();
        for name in resp.headers_names() {
            if HOP.contains(&name.as_str()) {
                continue;
            }
            // A name comes once per value; every value is taken the first time.
            let Ok(n) = HeaderName::try_from(name.as_str()) else {
                continue;
            };
            if out.contains_key(&n) {
                continue;
            }
            // Every value: a sign-in sets two cookies.
            for v in resp.all(&name) {
                if let Ok(v) = HeaderValue::from_str(v) {
                    out.append(n.clone(), v);
                }
            }
        }
        if head_tx.send(Ok((resp.status(), out))).is_err() {
            return;
        }
        use std::io::Read;
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; FORWARD_CHUNK];
        loop {
            let piece = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(std::io::Error::other(format!(
                    "reading the leader's answer: {e}"
                ))),
            };
            let failed = piece.is_err();
            // The client left (its connection closed): stop reading, which closes the one
            // to the leader, which ends what it streams.
            if body_tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    match head_rx.await {
        Ok(Ok((status, headers))) => {
            let mut r = Response::new(Body::new(Relayed(body_rx)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            *r.headers_mut() = headers;
            r
        }
        Ok(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_unreachable",
            format!("{e}; retry"),
            Some(&leader),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the forwarding thread ended without an answer".into(),
            None,
        ),
    }
}

/// 200 on the leader, 503 elsewhere (for a load balancer): nothing else is said.
async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
    if sh.status().role == Role::Leader {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready"})),
        )
            .into_response()
    }
}

/// This replica's view: its role and term, the leader, and every replica heard from.
async fn replica_status(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = sh.refuse_unless_admin(&headers) {
        return r;
    }
    let s = sh.status().clone();
    let store_seq = s.store_seq;
    let replicas: Vec<Value> = s
        .replicas
        .iter()
        .filter(|r| r.seen_ms_ago < 60_000)
        .map(|r| {
            let leader = s.leader_url.as_deref() == Some(r.url.as_str()) && r.role == "leader";
            json!({
                "id": r.id,
                "url": r.url,
                "leader": leader,
                "role": r.role,
                "applied_seq": r.applied_seq,
                "lag_records": store_seq.saturating_sub(r.applied_seq),
                "seen_ms_ago": r.seen_ms_ago,
            })
        })
        .collect();
    axum::Json(json!({
        "id": sh.id,
        "url": sh.advertise,
        "role": s.role.name(),
        "leader": s.role == Role::Leader,
        "leader_url": s.leader_url,
        "term": s.term,
        "applied_seq": s.applied_seq,
        "log_seq": store_seq,
        "lag_ms": s.lag_ms,
        "lease_ms": sh.cfg.leader_lease_ms,
        "store": PgStore::display_url(&sh.url),
        "error": s.error,
        "replicas": replicas,
    }))
    .into_response()
}
