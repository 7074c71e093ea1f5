//! The agent's log server: `GET /logs/{job}/{attempt}/{task}/{stdout|stderr}?offset=N&limit=M`
//! with `Authorization: Bearer SECRET`, for the controller to proxy (`docs/AGENTS.md`, Logs).
//!
//! Plain HTTP/1.1 on std, one short-lived thread per connection: the only client is the
//! controller, requests are tiny, and the agent has no async runtime to share.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Default and largest answer.
pub const MAX_LIMIT: u64 = 1 << 20;

/// A running log server.
pub struct LogServer {
    pub addr: SocketAddr,
    closed: Arc<AtomicBool>,
}

impl LogServer {
    /// Binds `listen` and serves `work_dir` in a background thread.
    pub fn start(
        listen: SocketAddr,
        work_dir: PathBuf,
        secret: String,
    ) -> anyhow::Result<LogServer> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("--logs-listen {listen}: cannot listen: {e}"))?;
        let addr = listener.local_addr()?;
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        let secret = Arc::new(secret);
        std::thread::Builder::new()
            .name("gosok-agent-logs".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if c.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (dir, secret) = (work_dir.clone(), secret.clone());
                    let _ = std::thread::Builder::new()
                        .name("gosok-agent-log".into())
                        .spawn(move || {
                            let _ = serve(conn, &dir, &secret);
                        });
                }
            })?;
        Ok(LogServer { addr, closed })
    }
}

impl Drop for LogServer {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

struct Answer {
    status: u16,
    size: Option<u64>,
    body: Vec<u8>,
}

fn text(status: u16, msg: &str) -> Answer {
    Answer {
        status,
        size: None,
        body: format!("{msg}\n").into_bytes(),
    }
}

fn serve(conn: TcpStream, dir: &std::path::Path, secret: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?.take(16 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_string());
        }
    }
    let answer = answer(&request_line, auth.as_deref(), dir, secret);
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    if let Some(size) = answer.size {
        head.push_str(&format!(
            "Content-Type: application/octet-stream\r\nX-Gosok-Log-Size: {size}\r\n"
        ));
    } else {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    if answer.status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    let mut w = &conn;
    w.write_all(head.as_bytes())?;
    w.write_all(&answer.body)?;
    w.flush()
}

/// Compares in time independent of where the first difference is.
fn same_secret(given: &str, secret: &str) -> bool {
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn answer(request_line: &str, auth: Option<&str>, dir: &std::path::Path, secret: &str) -> Answer {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return text(400, "malformed request");
    };
    let authorized = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| same_secret(t.trim(), secret));
    if !authorized {
        return text(401, "a valid bearer token is required");
    }
    if method != "GET" {
        return text(405, "only GET is served");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segs: Vec<&str> = path.split('/').collect();
    let ["", "logs", job, attempt, task, stream] = segs[..] else {
        return text(
            404,
            "no such path; expected /logs/{job}/{attempt}/{task}/{stdout|stderr}",
        );
    };
    let (Ok(job), Ok(attempt), Ok(task)) = (
        job.parse::<u64>(),
        attempt.parse::<u32>(),
        task.parse::<u32>(),
    ) else {
        return text(400, "job, attempt and task must be whole numbers");
    };
    if stream != "stdout" && stream != "stderr" {
        return text(400, "the stream must be stdout or stderr");
    }
    let mut offset = 0u64;
    let mut limit = MAX_LIMIT;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let Ok(n) = v.parse::<u64>() else {
            return text(400, &format!("{k} must be a whole number"));
        };
        match k {
            "offset" => offset = n,
            // Larger limits are served as the maximum: the caller pages on with the size header.
            "limit" => limit = n.min(MAX_LIMIT),
            _ => return text(400, &format!("unknown parameter {k:?}")),
        }
    }
    let task_dir = dir
        .join(job.to_string())
        .join(attempt.to_string())
        .join(task.to_string());
    let file = task_dir.join(format!("{stream}.log"));
    let mut f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return text(
                404,
                &format!("no task {job}/{attempt}/{task} on this agent"),
            );
        }
        Err(e) => return text(500, &format!("cannot read the log: {e}")),
    };
    let read = (|| -> std::io::Result<(u64, Vec<u8>)> {
        let size = f.metadata()?.len();
        let mut body = Vec::new();
        if offset < size {
            f.seek(SeekFrom::Start(offset))?;
            f.take(limit.min(size - offset)).read_to_end(&mut body)?;
        }
        Ok((size, body))
    })();
    match read {
        Ok((size, body)) => Answer {
            status: 200,
            size: Some(size),
            body,
        },
        Err(e) => text(500, &format!("cannot read the log: {e}")),
    }
}
