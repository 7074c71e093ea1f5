//! HTTP to the controller's `/v1/agent/*` routes, with retries for what a retry can fix.

use std::time::{Duration, Instant};

use gosok_model::agent::{
    RegisterRequest, RegisterResponse, ReportRequest, ReportResponse, SyncRequest, SyncResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A TLS configuration that trusts only the CA certificates in `path` (PEM): for a controller
/// whose certificate a private CA signed (`--ca`).
pub fn tls_trusting(
    path: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "--ca {}: no certificate in it",
        path.display()
    );
    for c in certs {
        roots
            .add(c)
            .map_err(|e| anyhow::anyhow!("--ca {}: {e}", path.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Why a call gave up.
#[derive(Debug)]
pub enum CallError {
    /// The controller refused the request (4xx): retrying would not help.
    Refused {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// The caller's gate closed before an attempt (lease lost, agent stopping).
    Aborted,
    /// The answer was not what the protocol says.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused {
                status,
                code,
                message,
                field,
            } => {
                write!(f, "the controller refused it ({status} {code}): {message}")?;
                if let Some(field) = field {
                    write!(f, " [field {field}]")?;
                }
                Ok(())
            }
            CallError::Aborted => write!(f, "abandoned"),
            CallError::Protocol(m) => write!(f, "unexpected answer from the controller: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A successful call: the answer and when the attempt that got it was sent (leases are renewed
/// when the controller receives a request, so the agent counts from the sending).
pub struct Answered<T> {
    pub value: T,
    pub sent: Instant,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Client {
    /// The controllers: replicas of one highway, any of which answers (a follower forwards
    /// to the leader). Calls go to `current` until it fails, then to the next.
    bases: std::sync::Arc<Vec<String>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    agent: ureq::Agent,
}

enum Attempt<T> {
    Done(T),
    /// Transport error or 5xx: worth another try.
    Retry(String),
    Fail(CallError),
}

impl Client {
    /// `server`: one controller URL, or several replicas' comma-separated. `tls`: the CAs to
    /// trust for an `https://` controller (None: the public ones).
    pub fn new(
        server: &str,
        token: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Client {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout_write(Duration::from_secs(10));
        if let Some(t) = tls {
            b = b.tls_config(t);
        }
        let bases: Vec<String> = server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Client {
            bases: std::sync::Arc::new(bases),
            current: Default::default(),
            token: token.to_string(),
            agent: b.build(),
        }
    }

    /// The controller URL calls go to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases
            .get(i % self.bases.len().max(1))
            .map_or("", String::as_str)
    }

    pub fn register(
        &self,
        req: &RegisterRequest,
        gate: &dyn Fn() -> bool,
        log: &dyn Fn(&str),
    ) -> Result<Answered<RegisterResponse>, CallError> {
        self.call(
            "/v1/agent/register",
            req,
            Duration::from_secs(30),
            gate,
            log,
        )
    }

    /// The long poll: the read timeout is the wait plus room for a slow answer.
    pub fn sync(
        &self,
        req: &SyncRequest,
        gate: &dyn Fn() -> bool,
        log: &dyn Fn(&str),
    ) -> Result<Answered<SyncResponse>, CallError> {
        let timeout = Duration::from_millis(req.wait_ms) + Duration::from_secs(2);
        self.call("/v1/agent/sync", req, timeout, gate, log)
    }

    pub fn report(
        &self,
        req: &ReportRequest,
        gate: &dyn Fn() -> bool,
        log: &dyn Fn(&str),
    ) -> Result<Answered<ReportResponse>, CallError> {
        self.call("/v1/agent/report", req, Duration::from_secs(30), gate, log)
    }

    /// Retries transport errors and 5xx with backoff (100 ms doubling to 2 s) for as long as
    /// `gate` allows; `log` hears about the first failure of a run of them.
    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        read_timeout: Duration,
        gate: &dyn Fn() -> bool,
        log: &dyn Fn(&str),
    ) -> Result<Answered<Resp>, CallError> {
        let body = serde_json::to_string(req).map_err(|e| CallError::Protocol(e.to_string()))?;
        let mut backoff = BACKOFF_FIRST;
        let mut failures = 0u32;
        loop {
            if !gate() {
                return Err(CallError::Aborted);
            }
            let sent = Instant::now();
            match self.attempt(path, &body, read_timeout) {
                Attempt::Done(value) => {
                    if failures > 0 {
                        log(&format!(
                            "{path}: reached the controller again after {failures} failed tries"
                        ));
                    }
                    return Ok(Answered { value, sent });
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(why) => {
                    if failures == 0 {
                        log(&format!("{path}: {why}; retrying"));
                    }
                    failures += 1;
                    // The next replica, if there are several: this one may be gone.
                    self.current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Sleeps in short steps so that a closing gate is seen quickly.
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if !gate() {
                            return Err(CallError::Aborted);
                        }
                        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn attempt<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &str,
        read_timeout: Duration,
    ) -> Attempt<Resp> {
        let base = self.base();
        let r = self
            .agent
            .post(&format!("{base}{path}"))
            .timeout(read_timeout)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/json")
            .send_string(body);
        match r {
            Ok(resp) => match resp.into_string() {
                Ok(text) => match serde_json::from_str(&text) {
                    Ok(v) => Attempt::Done(v),
                    Err(e) => Attempt::Fail(CallError::Protocol(format!("{path}: {e}"))),
                },
                Err(e) => Attempt::Retry(format!("reading the answer: {e}")),
            },
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                if status >= 500 {
                    return Attempt::Retry(format!(
                        "the controller answered {status}: {}",
                        text.trim()
                    ));
                }
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let e = &v["error"];
                let s = |x: &serde_json::Value| x.as_str().map(str::to_string);
                Attempt::Fail(CallError::Refused {
                    status,
                    code: s(&e["code"]).unwrap_or_else(|| "unknown".into()),
                    message: s(&e["message"]).unwrap_or_else(|| text.trim().to_string()),
                    field: s(&e["field"]),
                })
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry(format!("cannot reach {base}: {t}")),
        }
    }
}
