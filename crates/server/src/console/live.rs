//! Live updates: `GET /console/live?path=PAGE&since=HASH` is a Server-Sent Events stream of
//! the page's `<main>`, sent whenever it renders differently. The page is rendered again when
//! the controller's log moves (every change is a record) — looked at every `POLL` — and,
//! for a job page, every second too (its output grows on the agent, not in the log). A
//! stream ends after a while (the browser reconnects at once, sending the last hash it got),
//! so that no connection is held open without bound; at most `MAX_STREAMS` are open at once.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{Cs, form, pages};

/// Streams open at once, in all: each renders its page on every change.
pub const MAX_STREAMS: usize = 64;
/// How often a stream looks at the log's sequence number.
const POLL: Duration = Duration::from_millis(200);
/// How often a job page is rendered again although the log did not move (its output).
const JOB_REFRESH: Duration = Duration::from_secs(1);
/// The longest a stream lasts before the browser reconnects.
const STREAM_MAX: Duration = Duration::from_secs(25);

/// A short fingerprint of a page's main part.
pub fn hash(main: &str) -> String {
    crate::auth::hex(&crate::auth::sha256(main.as_bytes()))[..16].to_string()
}

pub async fn stream(State(cs): State<Cs>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let Some(s) = cs.session(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let q = match form(raw.unwrap_or_default().as_bytes(), &["path", "since"]) {
        Ok(q) => q,
        Err(f) => return (f.status, f.message).into_response(),
    };
    let target = q.get("path").cloned().unwrap_or_else(|| "/".into());
    if !target.starts_with('/') || target.starts_with("//") {
        return (StatusCode::BAD_REQUEST, "path: a page of this console").into_response();
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.clone(), None),
    };
    // A reconnecting browser says what it has: the Last-Event-ID header, else `since`.
    let mut sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("since").cloned())
        .unwrap_or_default();
    let Ok(permit) = cs.live.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many live views are open; this page will not update by itself",
        )
            .into_response();
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let is_job = path.starts_with("/jobs/");
    let lifetime =
        STREAM_MAX.min(Duration::from_millis(cs.app.cfg.idle_timeout_ms / 2).max(POLL * 5));
    let cs2: Arc<super::Console> = cs.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        if tx
            .send(Bytes::from_static(b"retry: 300\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut seen_seq = None;
        let mut rendered_at = Instant::now();
        while started.elapsed() < lifetime {
            let seq = cs2.app.core().seq();
            let due = seen_seq != Some(seq) || (is_job && rendered_at.elapsed() >= JOB_REFRESH);
            if due {
                seen_seq = Some(seq);
                rendered_at = Instant::now();
                match pages::render(&cs2, &s, &path, query.clone()).await {
                    Ok(p) => {
                        let h = hash(&p.main);
                        if h != sent {
                            if tx.send(event(&h, &p.main)).await.is_err() {
                                return;
                            }
                            sent = h;
                        }
                    }
                    // Signed out or revoked: the page's next load says so.
                    Err(f) if f.status == StatusCode::UNAUTHORIZED => return,
                    Err(_) => {}
                }
            } else if tx.is_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let mut r = Body::new(Events(rx)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One SSE event carrying a page's main part; every line of it a `data:` line.
fn event(id: &str, main: &str) -> Bytes {
    let mut out = String::with_capacity(main.len() + 64);
    out.push_str("id: ");
    out.push_str(id);
    out.push_str("\nevent: main\n");
    for line in main.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The response body: what the stream's task sends, as it sends it.
struct Events(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_line_of_a_page_is_a_data_line() {
        let e = super::event("abc", "<p>a</p>\n<p>b</p>");
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            "id: abc\nevent: main\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
        );
    }
}
