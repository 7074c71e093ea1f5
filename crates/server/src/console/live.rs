//! Live updates: `GET /console/live?path=PAGE&since=HASH` is a Server-Sent Events stream of
//! the page's `<main>`, sent whenever it renders differently. The page is rendered again when
//! the controller's log moves (every change is a record) — looked at every `POLL` — and,
//! for a job page, every second too (its output grows on the agent, not in the log). A
//! stream ends after a while (the browser reconnects at once, sending the last hash it got),
//! so that no connection is held open without bound. A browser that closes its connection
//! ends its stream within a `POLL`; a comment line every `KEEPALIVE` lets whatever relays
//! the stream (a follower replica, a proxy) notice as soon that its client has gone.
//!
//! Each stream renders a page on every change, so their number is bounded three ways
//! (`Slots`): `MAX_STREAMS` in all; `MAX_STREAMS_PER_PRINCIPAL` for one tenant (all its
//! tokens together) or one admin token; and tenants together may hold all but
//! `ADMIN_RESERVED` of them, so that the operator's views update whatever tenants do.
//! A stream over a bound is refused with a message that names it (429 for the principal's
//! own bound, 503 for the shared ones), and the page simply does not update by itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::{Cs, Session, form, pages};

/// Streams open at once, in all: each renders its page on every change.
pub const MAX_STREAMS: usize = 64;
/// Streams one tenant (all its tokens together), or one admin token, may hold at once.
pub const MAX_STREAMS_PER_PRINCIPAL: usize = 8;
/// Streams only admins may take: tenants together hold at most `MAX_STREAMS` less these.
pub const ADMIN_RESERVED: usize = 8;
/// How often a stream looks at the log's sequence number.
const POLL: Duration = Duration::from_millis(200);
/// How often a job page is rendered again although the log did not move (its output).
const JOB_REFRESH: Duration = Duration::from_secs(1);
/// The longest a stream lasts before the browser reconnects.
const STREAM_MAX: Duration = Duration::from_secs(25);
/// A stream that sent nothing for this long sends a comment line, so that a relay (a
/// follower forwarding the stream) writes to its client and finds out if it has gone.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Whom a stream counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// One admin token (its id).
    Admin(String),
    /// One tenant, whatever its token.
    Tenant(String),
}

impl Holder {
    fn of(s: &Session) -> Holder {
        match &s.tenant {
            Some(t) => Holder::Tenant(t.clone()),
            None => Holder::Admin(s.token_id.clone()),
        }
    }
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The holder has `MAX_STREAMS_PER_PRINCIPAL` open.
    Principal,
    /// Tenants together hold all they may (`MAX_STREAMS - ADMIN_RESERVED`).
    Tenants,
    /// `MAX_STREAMS` are open.
    All,
}

#[derive(Default)]
struct Counts {
    all: usize,
    tenants: usize,
    by: HashMap<Holder, usize>,
}

/// The open streams, counted as a whole, for tenants together, and per holder.
pub struct Slots {
    max_all: usize,
    max_per: usize,
    reserved: usize,
    counts: Mutex<Counts>,
}

/// One open stream's place; given back when dropped (the stream ended, however).
pub struct Slot {
    slots: Arc<Slots>,
    holder: Holder,
}

impl Slots {
    pub fn new(max_all: usize, max_per: usize, reserved: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_all,
            max_per,
            reserved,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn take(self: &Arc<Self>, holder: Holder) -> Result<Slot, Full> {
        let mut c = self.counts();
        let tenant = matches!(holder, Holder::Tenant(_));
        if c.by.get(&holder).copied().unwrap_or(0) >= self.max_per {
            return Err(Full::Principal);
        }
        if c.all >= self.max_all {
            return Err(Full::All);
        }
        if tenant && c.tenants >= self.max_all.saturating_sub(self.reserved) {
            return Err(Full::Tenants);
        }
        c.all += 1;
        if tenant {
            c.tenants += 1;
        }
        *c.by.entry(holder.clone()).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            holder,
        })
    }

    /// Streams open now: in all, and of `holder`.
    #[cfg(test)]
    fn open(&self, holder: &Holder) -> (usize, usize) {
        let c = self.counts();
        (c.all, c.by.get(holder).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts();
        c.all = c.all.saturating_sub(1);
        if matches!(self.holder, Holder::Tenant(_)) {
            c.tenants = c.tenants.saturating_sub(1);
        }
        if let Some(n) = c.by.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by.remove(&self.holder);
            }
        }
    }
}

/// A short fingerprint of a page's main part.
pub fn hash(main: &str) -> String {
    crate::auth::hex(&crate::auth::sha256(main.as_bytes()))[..16].to_string()
}

/// The refusal of a stream over a bound; the page still works, it only does not update.
fn refused(s: &Session, full: Full) -> Response {
    let who = match &s.tenant {
        Some(t) => format!("tenant {t}"),
        None => "this admin token".to_string(),
    };
    let (status, message) = match full {
        Full::Principal => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{who} has {MAX_STREAMS_PER_PRINCIPAL} live views open, the most one may have \
                 (console live streams per tenant or admin token); close one, or reload to see changes"
            ),
        ),
        Full::Tenants => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "tenants have {} live views open, the most they may have together (the rest are \
                 kept for operators); this page will not update by itself",
                MAX_STREAMS - ADMIN_RESERVED
            ),
        ),
        Full::All => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_STREAMS} live views are open, the most this controller serves; this page \
                 will not update by itself"
            ),
        ),
    };
    let mut r = (status, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    r
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
    let slot = match cs.live.take(Holder::of(&s)) {
        Ok(slot) => slot,
        Err(full) => return refused(&s, full),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let is_job = path.starts_with("/jobs/");
    // Within the connection's idle timeout (the server closes a connection whose response
    // went out that long ago) and a follower's forwarding timeout (the request timeout).
    let cfg = &cs.app.cfg;
    let lifetime = STREAM_MAX
        .min(Duration::from_millis(cfg.idle_timeout_ms / 2))
        .min(Duration::from_millis(cfg.request_timeout_ms / 2))
        .max(POLL * 5);
    let cs2: Arc<super::Console> = cs.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let started = Instant::now();
        if tx
            .send(Bytes::from_static(b"retry: 300\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut sent_at = Instant::now();
        let mut seen_seq = None;
        let mut rendered_at = Instant::now();
        while started.elapsed() < lifetime {
            if tx.is_closed() {
                return;
            }
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
                            sent_at = Instant::now();
                        }
                    }
                    // Signed out or revoked: the page's next load says so.
                    Err(f) if f.status == StatusCode::UNAUTHORIZED => return,
                    Err(_) => {}
                }
            }
            if sent_at.elapsed() >= KEEPALIVE {
                if tx.send(Bytes::from_static(b": -\n\n")).await.is_err() {
                    return;
                }
                sent_at = Instant::now();
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

/// One SSE event carrying a page's main part; every line of it a `data:` line. An SSE
/// reader ends a line at CR LF, LF or CR alike, so each of them ends a `data:` line here:
/// a bare CR left inside one (a tenant's job output can hold any) would start a line of its
/// own in every viewer's reader — an `id:`, `event:` or `retry:` of the tenant's choosing.
/// The reader joins data lines with LF, which HTML reads as it reads CR and CR LF.
fn event(id: &str, main: &str) -> Bytes {
    let mut out = String::with_capacity(main.len() + 64);
    out.push_str("id: ");
    out.push_str(id);
    out.push_str("\nevent: main\n");
    let mut rest = main;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
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
    use super::*;

    /// An event stream as the HTML standard's reader parses it: lines end at CR LF, LF or
    /// CR; `field: value`; a blank line dispatches. Returns (id, type, data) per event.
    fn parse(stream: &str) -> Vec<(String, String, String)> {
        let (mut events, mut id, mut kind, mut data) =
            (Vec::new(), String::new(), String::new(), String::new());
        let mut lines = Vec::new();
        let mut rest = stream;
        while let Some(end) = rest.find(['\r', '\n']) {
            lines.push(&rest[..end]);
            let skip = if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            };
            rest = &rest[end + skip..];
        }
        for line in lines {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push((
                        id.clone(),
                        std::mem::take(&mut kind),
                        std::mem::take(&mut data),
                    ));
                }
                kind.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.to_string(),
                "event" => kind = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                _ => {}
            }
        }
        events
    }

    #[test]
    fn every_line_of_a_page_is_a_data_line() {
        let e = event("abc", "<p>a</p>\n<p>b</p>");
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            "id: abc\nevent: main\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
        );
    }

    #[test]
    fn no_line_ending_in_a_page_starts_a_field_of_its_own() {
        for hostile in [
            "<pre>a\rid: evil\revent: pwn\r\rdata: x</pre>",
            "a\r\nretry: 1\r\n\r\nevent: pwn\n\ndata: y",
            "\r",
            "\n\n",
            "\r\r\n\n\r",
            "tail\r",
            "",
        ] {
            let e = event("abc", hostile);
            let text = std::str::from_utf8(&e).unwrap();
            let events = parse(text);
            let want = hostile.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(
                events,
                vec![("abc".to_string(), "main".to_string(), want)],
                "{hostile:?} was sent as {text:?}"
            );
            // Nothing but the three fields: the stream's own retry and comments aside.
            for line in text.split('\n').filter(|l| !l.is_empty()) {
                assert!(
                    line.starts_with("id: ")
                        || line.starts_with("event: ")
                        || line.starts_with("data: "),
                    "{line:?} in {text:?}"
                );
                assert!(!line.contains('\r'), "{line:?}");
            }
        }
    }

    #[test]
    fn streams_are_bounded_per_principal_for_tenants_together_and_in_all() {
        let slots = Slots::new(6, 2, 2);
        let (a, b, c) = (
            Holder::Tenant("a".into()),
            Holder::Tenant("b".into()),
            Holder::Tenant("c".into()),
        );
        let a1 = slots.take(a.clone()).unwrap();
        let _a2 = slots.take(a.clone()).unwrap();
        assert_eq!(slots.take(a.clone()).err(), Some(Full::Principal));
        let _b1 = slots.take(b.clone()).unwrap();
        let _b2 = slots.take(b.clone()).unwrap();
        // Four tenant streams: the last two are the operators'.
        assert_eq!(slots.take(c.clone()).err(), Some(Full::Tenants));
        let root = Holder::Admin("root".into());
        let _r1 = slots.take(root.clone()).unwrap();
        let _r2 = slots.take(root.clone()).unwrap();
        assert_eq!(slots.take(root.clone()).err(), Some(Full::Principal));
        assert_eq!(
            slots.take(Holder::Admin("ops".into())).err(),
            Some(Full::All)
        );
        // A stream that ends frees its place for anyone.
        drop(a1);
        assert_eq!(slots.open(&a), (5, 1));
        let c1 = slots.take(c.clone()).unwrap();
        assert_eq!(slots.open(&c), (6, 1));
        drop(c1);
        assert_eq!(slots.open(&c), (5, 0));
        assert!(
            !slots.counts().by.contains_key(&c),
            "no entry is kept for a holder with none"
        );
    }
}
