//! GET /metrics in the Prometheus text format: queue depth per tenant, decisions (a counter:
//! `rate()` gives decisions per second), scheduling-pass latency, allocated accelerators per
//! site and model, power per site against its budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::Core;
use crate::disk::DiskWatch;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    pass_latency: Histogram,
    /// Nodes the controller lost because their agent's lease ran out (since this start).
    pub leases_expired: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            // 50 µs .. ~1.6 s
            pass_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            leases_expired: Counter::default(),
        }
    }

    pub fn observe_pass(&self, d: Duration) {
        self.pass_latency.observe(d.as_secs_f64());
    }

    /// Renders the current state.
    pub fn render(
        &self,
        core: &Core,
        durable_seq: u64,
        commit_batches: u64,
        disk: &DiskWatch,
        http: &crate::http::Stats,
    ) -> String {
        let mut reg = Registry::default();
        reg.register(
            "gosok_agent_leases_expired",
            "Nodes lost because their agent did not renew its lease in time (since this start)",
            self.leases_expired.clone(),
        );
        let queue = Family::<Labels, Gauge>::default();
        reg.register(
            "gosok_queue_depth",
            "Pending jobs per tenant",
            queue.clone(),
        );
        for (t, n) in core.pending_by_tenant() {
            queue
                .get_or_create(&vec![("tenant".into(), t.to_string())])
                .set(*n as i64);
        }
        let decisions = Family::<Labels, Counter>::default();
        reg.register(
            "gosok_decisions",
            "Scheduling decisions by kind (rate() gives decisions per second)",
            decisions.clone(),
        );
        for (k, n) in &core.counters.decisions {
            decisions
                .get_or_create(&vec![("kind".into(), k.to_string())])
                .inc_by(*n);
        }
        let submitted = Counter::<u64>::default();
        submitted.inc_by(core.counters.submitted);
        reg.register("gosok_jobs_submitted", "Jobs submitted", submitted);
        reg.register(
            "gosok_scheduling_pass_seconds",
            "Latency of a scheduling pass",
            self.pass_latency.clone(),
        );
        // Nodes by state, and how many of them agents hold (lost: their lease ran out).
        let nodes = Family::<Labels, Gauge>::default();
        reg.register(
            "gosok_nodes",
            "Nodes per state (up, draining, down) and whether an agent holds them",
            nodes.clone(),
        );
        for (name, state) in core.node_states() {
            let agent = match core.node_agent(name) {
                None => "none",
                Some(a) if a.lost => "lost",
                Some(_) => "claimed",
            };
            let state = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            nodes
                .get_or_create(&vec![
                    ("state".into(), state),
                    ("agent".into(), agent.into()),
                ])
                .inc();
        }
        let engine = core.engine();
        let c = engine.cluster();
        let mut alloc: BTreeMap<(String, String), f64> = BTreeMap::new();
        for n in &c.nodes {
            let Some(m) = n.model else { continue };
            let used = n.used_total_milli() as f64 / 1000.0;
            *alloc
                .entry((
                    c.sites[n.site as usize].name.to_string(),
                    c.model_names[m as usize].to_string(),
                ))
                .or_default() += used;
        }
        let allocated = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        reg.register(
            "gosok_allocated_accelerators",
            "Accelerators held by running work, per site and model",
            allocated.clone(),
        );
        for ((s, m), v) in alloc {
            allocated
                .get_or_create(&vec![("site".into(), s), ("model".into(), m)])
                .set(v);
        }
        let power = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let budget = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        reg.register(
            "gosok_site_power_watts",
            "Estimated facility draw per site (IT draw x PUE)",
            power.clone(),
        );
        reg.register(
            "gosok_site_power_budget_watts",
            "Facility power budget per site",
            budget.clone(),
        );
        for (i, s) in c.sites.iter().enumerate() {
            let l = vec![("site".into(), s.name.to_string())];
            power
                .get_or_create(&l)
                .set(c.site_facility_draw_w(i as u16) as f64);
            budget.get_or_create(&l).set(s.budget_w as f64);
        }
        let seq = Gauge::<i64>::default();
        seq.set(durable_seq as i64);
        reg.register("gosok_log_durable_seq", "Last durable log record", seq);
        let batches = Counter::<u64>::default();
        batches.inc_by(commit_batches);
        reg.register(
            "gosok_log_commits",
            "Log transactions (one fsync each) written",
            batches,
        );
        let (space, low) = disk.status();
        let g = |v: u64| {
            let x = Gauge::<i64>::default();
            x.set(v.min(i64::MAX as u64) as i64);
            x
        };
        reg.register(
            "gosok_disk_free_bytes",
            "Free space on the data directory's file system",
            g(space.free_bytes),
        );
        reg.register(
            "gosok_disk_watermark_bytes",
            "Below this much free space new submissions are refused (507)",
            g(disk.threshold(space.total_bytes)),
        );
        reg.register(
            "gosok_disk_low",
            "1 while free space is below the watermark",
            g(low as u64),
        );
        let c = |v: &std::sync::atomic::AtomicU64| {
            let x = Counter::<u64>::default();
            x.inc_by(v.load(Ordering::Relaxed));
            x
        };
        reg.register(
            "gosok_submissions_refused_disk_low",
            "Submissions refused for want of disk space",
            c(&disk.refused),
        );
        reg.register(
            "gosok_http_connections_open",
            "Open HTTP connections",
            g(http.open.load(Ordering::Relaxed)),
        );
        reg.register(
            "gosok_http_connections_accepted",
            "HTTP connections accepted",
            c(&http.accepted),
        );
        let closed = Family::<Labels, Counter>::default();
        reg.register(
            "gosok_http_connections_closed_by_limit",
            "HTTP connections closed by a limit (max_connections, max_connections_per_address, header_read_timeout, idle_timeout) or a failed TLS handshake",
            closed.clone(),
        );
        for (why, v) in [
            ("max_connections", &http.refused_total),
            ("max_connections_per_address", &http.refused_per_address),
            ("header_read_timeout", &http.header_timeouts),
            ("idle_timeout", &http.idle_closed),
            ("tls_handshake", &http.tls_failures),
        ] {
            closed
                .get_or_create(&vec![("limit".into(), why.into())])
                .inc_by(v.load(Ordering::Relaxed));
        }
        let timeouts = Family::<Labels, Counter>::default();
        reg.register(
            "gosok_http_request_timeouts",
            "Requests answered 408 (body_read_timeout) or 503 (request_timeout)",
            timeouts.clone(),
        );
        for (why, v) in [
            ("body_read_timeout", &http.body_timeouts),
            ("request_timeout", &http.request_timeouts),
        ] {
            timeouts
                .get_or_create(&vec![("limit".into(), why.into())])
                .inc_by(v.load(Ordering::Relaxed));
        }
        crate::usage::register_metrics(&mut reg, core);
        let mut out = String::new();
        let _ = encode(&mut out, &reg);
        out
    }
}
