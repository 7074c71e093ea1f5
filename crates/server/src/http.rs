//! Serving HTTP with limits: the accept loop and each connection's life.
//!
//! - At most `max_connections` connections at once, and `max_connections_per_address` from one
//!   client address; a connection beyond either is closed as soon as it is accepted.
//! - A connection must send a whole request head within `header_read_timeout_ms` of its first
//!   byte (or of being accepted); a kept-alive connection with no request for
//!   `idle_timeout_ms` is closed. A watchdog per connection enforces both (hyper's own header
//!   timeout would also close kept-alive connections that are merely idle).
//! - A request's body must arrive whole within `body_read_timeout_ms` (408), and at most
//!   `max_body_bytes` of it (413); the handler must answer within `request_timeout_ms` (503).
//!
//! Requests are HTTP/1.1 (what every gosok client speaks).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

use crate::config::Config;
use crate::error::ApiError;

/// The limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub request: Duration,
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn of(cfg: &Config) -> Limits {
        Limits {
            max_connections: cfg.max_connections,
            max_connections_per_address: cfg.max_connections_per_address,
            header_read: Duration::from_millis(cfg.header_read_timeout_ms),
            idle: Duration::from_millis(cfg.idle_timeout_ms),
            body_read: Duration::from_millis(cfg.body_read_timeout_ms),
            request: Duration::from_millis(cfg.request_timeout_ms),
            max_body_bytes: cfg.max_body_bytes,
        }
    }
}

/// What the limits did, for /metrics and /healthz.
#[derive(Debug, Default)]
pub struct Stats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed at once: `max_connections` were open.
    pub refused_total: AtomicU64,
    /// Closed at once: `max_connections_per_address` were open from that address.
    pub refused_per_address: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_closed: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub request_timeouts: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
}

fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    // +1: 0 means "not set" below.
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Raises the soft limit on open files to the hard one (connections are files); returns it.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a properly sized, initialised struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
        r.rlim_cur as u64
    }
}

/// The TLS side of serving HTTPS: certificate chain and key from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("tls_cert {}: {e}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls_cert {}: no certificate in it",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("tls_key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| anyhow::anyhow!("tls_cert and tls_key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One connection's activity, shared by its stream, its requests and its watchdog.
#[derive(Default)]
struct Activity {
    /// A request is being handled.
    busy: AtomicBool,
    /// When the connection last became idle (accepted, or a response was done).
    idle_since_ms: AtomicU64,
    /// The first byte read since then (a request head is arriving); 0: none.
    first_byte_ms: AtomicU64,
    /// A request was served on it (it is a kept-alive connection now).
    served: AtomicBool,
}

/// Marks a connection busy while a request is handled.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.store(true, Ordering::Relaxed);
        a.first_byte_ms.store(0, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.first_byte_ms.store(0, Ordering::Relaxed);
        self.0.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.0.served.store(true, Ordering::Relaxed);
        self.0.busy.store(false, Ordering::Relaxed);
    }
}

/// A stream (TCP, or TLS over it) that notes when bytes of a new request arrive.
struct Watched<S> {
    inner: S,
    act: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && !self.act.busy.load(Ordering::Relaxed)
            && self.act.first_byte_ms.load(Ordering::Relaxed) == 0
        {
            self.act.first_byte_ms.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    HeaderTimeout,
    Idle,
}

/// Returns when the connection has waited too long for a request head, or idled too long.
async fn watchdog(act: Arc<Activity>, header: Duration, idle: Duration) -> Close {
    let (header_ms, idle_ms) = (header.as_millis() as u64, idle.as_millis() as u64);
    loop {
        let now = now_ms();
        if act.busy.load(Ordering::Relaxed) {
            // The request and body timeouts bound a request; look again later.
            tokio::time::sleep(header.min(idle)).await;
            continue;
        }
        let first = act.first_byte_ms.load(Ordering::Relaxed);
        let (deadline, why) = if first != 0 {
            (first + header_ms, Close::HeaderTimeout)
        } else if act.served.load(Ordering::Relaxed) {
            (
                act.idle_since_ms.load(Ordering::Relaxed) + idle_ms,
                Close::Idle,
            )
        } else {
            // A new connection that has sent nothing yet: it owes a request head.
            (
                act.idle_since_ms.load(Ordering::Relaxed) + header_ms,
                Close::HeaderTimeout,
            )
        };
        if now >= deadline {
            // Look again: a request may have begun since the loads above.
            if !act.busy.load(Ordering::Relaxed) {
                return why;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// Counts the connections of one client address; gives its place back when dropped.
struct AddressSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, cap: usize) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Counts an open connection while it lives.
struct Open(Arc<Stats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` under `limits` until `stop` resolves; then lets each
/// connection finish the request it is in (up to `grace`) and returns.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Limits,
    stats: Arc<Stats>,
    stop: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let addresses: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused_total.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let Some(slot) =
            AddressSlot::take(&addresses, peer.ip(), limits.max_connections_per_address)
        else {
            stats.refused_per_address.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(stats.clone());
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            tls.clone(),
            router.clone(),
            limits.clone(),
            stats.clone(),
            stop_rx.clone(),
            (permit, slot, open),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    Ok(())
}

async fn connection<G: Send + 'static>(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Arc<Limits>,
    stats: Arc<Stats>,
    stop: watch::Receiver<bool>,
    held: G,
) {
    let Some(tls) = tls else {
        return serve_connection(stream, router, limits, stats, stop, held).await;
    };
    // The handshake is part of what a client must send within the header-read timeout.
    match tokio::time::timeout(limits.header_read, tls.accept(stream)).await {
        Ok(Ok(s)) => serve_connection(s, router, limits, stats, stop, held).await,
        Ok(Err(e)) => {
            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake failed: {e}");
        }
        Err(_) => {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn serve_connection<S, G>(
    stream: S,
    router: Router,
    limits: Arc<Limits>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
    _held: G,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let act = Arc::new(Activity::default());
    act.idle_since_ms.store(now_ms(), Ordering::Relaxed);
    let io = TokioIo::new(Watched {
        inner: stream,
        act: act.clone(),
    });
    let (act2, limits2, stats2) = (act.clone(), limits.clone(), stats.clone());
    let svc = hyper::service::service_fn(move |req| {
        handle(
            req,
            router.clone(),
            limits2.clone(),
            act2.clone(),
            stats2.clone(),
        )
    });
    // The watchdog times request heads: hyper's own timer would also close kept-alive
    // connections that are only idle.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let dog = watchdog(act, limits.header_read, limits.idle);
    tokio::pin!(dog);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            why = &mut dog => {
                match why {
                    Close::HeaderTimeout => stats.header_timeouts.fetch_add(1, Ordering::Relaxed),
                    Close::Idle => stats.idle_closed.fetch_add(1, Ordering::Relaxed),
                };
                // Dropping the connection closes the socket.
                return;
            }
            r = stop.changed(), if !stopping => {
                stopping = true;
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// One request: the body read whole (within its timeout and size), then the router (within
/// the request timeout).
async fn handle(
    req: Request<hyper::body::Incoming>,
    mut router: Router,
    limits: Arc<Limits>,
    act: Arc<Activity>,
    stats: Arc<Stats>,
) -> Result<Response<Body>, Infallible> {
    let _busy = Busy::new(act);
    let (parts, body) = req.into_parts();
    let body = if body.is_end_stream() {
        Body::empty()
    } else {
        let read = http_body_util::Limited::new(body, limits.max_body_bytes).collect();
        match tokio::time::timeout(limits.body_read, read).await {
            Err(_) => {
                stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
                return Ok(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {} ms (body_read_timeout_ms)",
                        limits.body_read.as_millis()
                    ),
                )
                .into_response());
            }
            Ok(Err(e)) => {
                let e = if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "the request body is larger than the server accepts ({} bytes, max_body_bytes)",
                            limits.max_body_bytes
                        ),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("the request body could not be read: {e}"),
                    )
                };
                return Ok(e.into_response());
            }
            Ok(Ok(c)) => Body::from(c.to_bytes()),
        }
    };
    let req = Request::from_parts(parts, body);
    match tokio::time::timeout(limits.request, router.call(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(never)) => match never {},
        Err(_) => {
            stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
            Ok(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request was not answered within {} ms (request_timeout_ms); try again",
                    limits.request.as_millis()
                ),
            )
            .into_response())
        }
    }
}
