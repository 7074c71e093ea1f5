//! Core snapshots: the engine's snapshot plus the controller's own records, so that a start
//! loads the latest snapshot and replays only the log records after it.
//!
//! Layout: `MAGIC`, `CORE_SNAPSHOT_FORMAT` (u32 LE), the engine snapshot's length (u64 LE)
//! and bytes ([`Engine::snapshot`]), then [`Image`] in bincode.
//!
//! To carry a new `Core` field: add it to [`Image`] (written in [`Core::snapshot`]) and take
//! it back in [`Core::restore`] (the compiler asks for it there), then bump
//! `CORE_SNAPSHOT_FORMAT` (and the expected value of `the_image_of_a_fixed_core_is_stable`).
//! A new field of `JobRecord`, `TokenRecord` or `Counters` is carried as it is (they derive
//! serde); bump the format for it too. Types in the image must encode in bincode: no
//! `skip_serializing_if`, no internally tagged or untagged enums (see `history` below for
//! how such a field is written instead).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Context;
use bincode::Options;
use gosok_engine::snapshot::{Model, codec};
use gosok_engine::{Engine, EngineConfig};
use gosok_model::{ClusterSpec, NodeState};
use serde::{Deserialize, Serialize};

use super::{Accounts, Core, Counters, JobRecord, Meter, NodeAgent, SpecSource, TokenRecord};

/// Bumped whenever [`Image`] or a type in it changes; a snapshot of another format is
/// refused (and the controller replays its whole log).
pub const CORE_SNAPSHOT_FORMAT: u32 = 3;

const MAGIC: &[u8; 8] = b"gosokCOR";

/// Idempotency keys by (tenant, key): the request's digest and the job it made.
type Idempotency = HashMap<(Arc<str>, String), (String, u64)>;

/// Everything of a [`Core`] but the engine (snapshotted on its own), the configuration
/// (given again at start) and the spec source. Borrowed when written, owned when read.
#[derive(Serialize, Deserialize)]
struct Image<'a> {
    /// As TOML, the cluster file's own format (its optional fields are skipped when empty,
    /// which bincode cannot read back).
    cluster_toml: Cow<'a, str>,
    added_models: Vec<Model>,
    node_states: Cow<'a, BTreeMap<String, NodeState>>,
    jobs: Cow<'a, [JobRecord]>,
    tokens: Cow<'a, HashMap<[u8; 32], TokenRecord>>,
    token_by_id: Cow<'a, BTreeMap<String, [u8; 32]>>,
    idempotency: Cow<'a, Idempotency>,
    pending_by_tenant: Cow<'a, BTreeMap<Arc<str>, u64>>,
    tenant_names: Cow<'a, BTreeMap<String, Arc<str>>>,
    now_s: u64,
    dirty: bool,
    running: u64,
    counters: Cow<'a, Counters>,
    initialised: bool,
    seq: u64,
    agents: Cow<'a, BTreeMap<String, NodeAgent>>,
    running_jobs: Cow<'a, BTreeSet<u64>>,
    meter: Cow<'a, Meter>,
    accounts: Cow<'a, Accounts>,
    gates: Cow<'a, super::dependencies::Gates>,
}

impl Core {
    /// The core's state as of [`Core::seq`]: what [`Core::restore`] reads back.
    pub fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        let engine = self.engine.snapshot()?;
        let image = Image {
            cluster_toml: Cow::Owned(
                toml::to_string(&self.cluster).context("the topology cannot be written")?,
            ),
            // A handful at most: the copy costs nothing.
            added_models: self.added_models.iter().cloned().map(Model).collect(),
            node_states: Cow::Borrowed(&self.node_states),
            jobs: Cow::Borrowed(&self.jobs),
            tokens: Cow::Borrowed(&self.tokens),
            token_by_id: Cow::Borrowed(&self.token_by_id),
            idempotency: Cow::Borrowed(&self.idempotency),
            pending_by_tenant: Cow::Borrowed(&self.pending_by_tenant),
            tenant_names: Cow::Borrowed(&self.tenant_names),
            now_s: self.now_s,
            dirty: self.dirty,
            running: self.running,
            counters: Cow::Borrowed(&self.counters),
            initialised: self.initialised,
            seq: self.seq,
            agents: Cow::Borrowed(&self.agents),
            running_jobs: Cow::Borrowed(&self.running_jobs),
            meter: Cow::Borrowed(&self.meter),
            accounts: Cow::Borrowed(&self.accounts),
            gates: Cow::Borrowed(&self.gates),
        };
        let mut out = Vec::with_capacity(engine.len() * 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CORE_SNAPSHOT_FORMAT.to_le_bytes());
        out.extend_from_slice(&(engine.len() as u64).to_le_bytes());
        out.extend_from_slice(&engine);
        drop(engine);
        codec().serialize_into(&mut out, &image)?;
        Ok(out)
    }

    /// The core a snapshot describes, on the engine configuration `cfg`. A snapshot taken
    /// under another engine configuration is refused: the log replayed under `cfg` would not
    /// give the same state.
    pub fn restore(bytes: &[u8], cfg: EngineConfig, specs: SpecSource) -> anyhow::Result<Core> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .context("not a gosok controller snapshot")?;
        let (format, body) = body
            .split_first_chunk::<4>()
            .context("the snapshot is cut short")?;
        let format = u32::from_le_bytes(*format);
        anyhow::ensure!(
            format == CORE_SNAPSHOT_FORMAT,
            "the snapshot is of format {format}; this gosok reads format {CORE_SNAPSHOT_FORMAT}"
        );
        let (len, body) = body
            .split_first_chunk::<8>()
            .context("the snapshot is cut short")?;
        let len = usize::try_from(u64::from_le_bytes(*len))?;
        anyhow::ensure!(len <= body.len(), "the snapshot is cut short");
        let (engine, body) = body.split_at(len);
        let engine = Engine::restore(engine)?;
        anyhow::ensure!(
            *engine.config() == cfg,
            "the snapshot was taken under another engine configuration"
        );
        let image: Image<'_> = codec()
            .deserialize(body)
            .context("the snapshot cannot be decoded")?;
        let cluster = ClusterSpec::from_toml(&image.cluster_toml)
            .map_err(|e| anyhow::anyhow!("the snapshot's topology: {}", e.message))?;
        let tenant_names = image.tenant_names.into_owned();
        let mut jobs = image.jobs.into_owned();
        // Decoding gave each job its own copy of its tenant's name: share them again.
        for j in &mut jobs {
            if let Some(t) = tenant_names.get(&*j.tenant) {
                j.tenant = t.clone();
            }
        }
        let mut meter = image.meter.into_owned();
        meter.reindex();
        let mut stored_by_tenant: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for j in &jobs {
            if let Some(r) = j.run.as_deref()
                && !j.state.is_terminal()
            {
                *stored_by_tenant.entry(j.tenant.clone()).or_default() += r.bytes();
            }
        }
        Ok(Core {
            cfg,
            catalog: engine.catalog().clone(),
            added_models: image.added_models.into_iter().map(|Model(m)| m).collect(),
            cluster,
            node_states: image.node_states.into_owned(),
            engine,
            jobs,
            tokens: image.tokens.into_owned(),
            token_by_id: image.token_by_id.into_owned(),
            idempotency: image.idempotency.into_owned(),
            pending_by_tenant: image.pending_by_tenant.into_owned(),
            stored_by_tenant,
            tenant_names,
            now_s: image.now_s,
            dirty: image.dirty,
            running: image.running,
            counters: image.counters.into_owned(),
            initialised: image.initialised,
            seq: image.seq,
            specs,
            agents: image.agents.into_owned(),
            running_jobs: image.running_jobs.into_owned(),
            meter,
            accounts: image.accounts.into_owned(),
            gates: image.gates.into_owned(),
        })
    }
}

/// Names the core keeps as `&'static str` (history events, decision kinds): a snapshot
/// holds them as strings, read back as static names. The known ones cost nothing; a name not
/// listed here (one added to the core since) is made static once per process, so that a new
/// event name never makes snapshots unreadable. Snapshots are the controller's own files, so
/// the names are few; more than `MAX_NAMES` distinct ones means a damaged snapshot.
static STATIC_NAMES: &[&str] = &[
    // History events.
    "started",
    "preempted",
    "requeued",
    "stopped",
    "rejected",
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "task_ended",
    // Decision kinds (`Counters::decisions`).
    "start",
    "preempt",
    "requeue",
    "stop",
    "reject",
    "finish",
    "shed",
];

const MAX_NAMES: usize = 1000;

fn static_name<E: serde::de::Error>(name: &str) -> Result<&'static str, E> {
    if let Some(&n) = STATIC_NAMES.iter().find(|&&n| n == name) {
        return Ok(n);
    }
    static OTHERS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut others = OTHERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&n) = others.iter().find(|&&n| n == name) {
        return Ok(n);
    }
    if others.len() >= MAX_NAMES {
        return Err(E::custom(format!(
            "more than {MAX_NAMES} distinct event names: the snapshot is damaged"
        )));
    }
    let n: &'static str = Box::leak(name.into());
    others.push(n);
    Ok(n)
}

/// A job's history: (at_ms, event, detail) each, every field written (the API's form skips
/// an empty detail, which bincode cannot read back).
pub(super) mod history {
    use super::*;
    use crate::core::HistoryItem;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[HistoryItem], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(h.iter().map(|i| (i.at_ms, i.event, &i.detail)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HistoryItem>, D::Error> {
        let items = Vec::<(u64, Cow<'de, str>, String)>::deserialize(d)?;
        items
            .into_iter()
            .map(|(at_ms, event, detail)| {
                Ok(HistoryItem {
                    at_ms,
                    event: static_name(&event)?,
                    detail,
                })
            })
            .collect()
    }
}

/// Decision counts by kind.
pub(super) mod decision_counts {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<&'static str, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<&'static str, u64>, D::Error> {
        BTreeMap::<Cow<'de, str>, u64>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| Ok((static_name(&k)?, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::{CLUSTER, core};
    use crate::entry::{Entry, Idempotency, TokenEntry};
    use gosok_engine::{JobId, JobState};
    use gosok_model::{JobSpec, TenantSpec, Tier};

    fn spec(accel: u64) -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "groups": [{"replicas": 1, "accelerators": accel, "models": ["H100"]}],
            "runtime_estimate_s": 100
        }))
        .unwrap()
    }

    /// A bit of everything the log holds, after `core()`'s init and topology (seq 1, 2).
    /// Some entries are refused (a report from the node the job does not run on): the
    /// original and the restored core must refuse them alike.
    fn entries() -> Vec<Entry> {
        let submit = |job: u64, accel: u64, key: Option<&str>| Entry::Submit {
            job,
            tenant: if job.is_multiple_of(3) { "team" } else { "lab" }.into(),
            spec: Box::new(spec(accel)),
            command: if job.is_multiple_of(2) {
                vec!["python3".into(), "train.py".into()]
            } else {
                vec![]
            },
            env: [("SEED".to_string(), job.to_string())].into(),
            workdir: None,
            idempotency: key.map(|k| Idempotency {
                key: k.into(),
                request_sha256: "ab".repeat(32),
            }),
            control: None,
            by: "admin".into(),
        };
        let ended = |node: &str| Entry::TaskEnded {
            job: 1,
            attempt: 1,
            task: 0,
            node: node.into(),
            epoch: 1,
            status: 0,
            detail: "exited".into(),
            energy_mj: None,
            limit: false,
            by: "agent".into(),
        };
        let claim = |node: &str| crate::entry::NodeClaim {
            name: node.into(),
            epoch: 1,
            labels: BTreeMap::new(),
        };
        let mut bigger = gosok_model::ClusterSpec::from_toml(CLUSTER).unwrap();
        bigger.node[0].count = Some(3);
        vec![
            Entry::AgentRegister {
                agent: "a1".into(),
                address: "10.0.0.7".into(),
                nodes: vec![claim("ph-r1-n-000"), claim("ph-r1-n-001")],
                by: "agent".into(),
            },
            Entry::Tenant {
                spec: TenantSpec {
                    weight: 0.7,
                    ..TenantSpec::new("team", Tier::Public)
                },
                by: "admin".into(),
            },
            Entry::TokenCreate {
                token: TokenEntry {
                    id: "tok-2".into(),
                    tenant: Some("lab".into()),
                    agent: false,
                    sha256: "11".repeat(32),
                },
                by: "admin".into(),
            },
            submit(1, 8, Some("a")),
            submit(2, 4, None),
            submit(3, 9, None),
            submit(4, 8, Some("b")),
            Entry::Tick { now_s: 1001 },
            submit(5, 2, None),
            Entry::Cancel {
                job: 2,
                by: "admin".into(),
            },
            Entry::Tick { now_s: 1002 },
            ended("ph-r1-n-000"),
            ended("ph-r1-n-001"),
            Entry::Tick { now_s: 1003 },
            Entry::NodeLost {
                node: "ph-r1-n-000".into(),
                epoch: 1,
            },
            Entry::NodeState {
                node: "ph-r1-n-001".into(),
                state: NodeState::Down,
                by: "admin".into(),
            },
            Entry::RackPowerCap {
                rack: "ph-r1".into(),
                power_cap_kw: 90.5,
                by: "admin".into(),
            },
            Entry::Tick { now_s: 1200 },
            Entry::TokenRevoke {
                id: "tok-2".into(),
                by: "admin".into(),
            },
            Entry::Topology {
                cluster: bigger,
                by: "admin".into(),
            },
            submit(6, 1, Some("c")),
            Entry::Tick { now_s: 1300 },
            Entry::SitePowerBudget {
                site: "pohang".into(),
                power_budget_mw: 0.0123,
                by: "admin".into(),
            },
            Entry::Tick { now_s: 1400 },
        ]
    }

    /// Reads a job's submission back from the log, as the controller's spec source does:
    /// the record at `seq` of `entries` applied from `first_seq` on. The original and the
    /// restored core must read the same specs, or a topology change (which submits the jobs
    /// again from the log) gives them different jobs.
    fn log_specs(first_seq: u64, entries: Vec<Entry>) -> SpecSource {
        Box::new(move |seq| {
            let i = usize::try_from(seq.checked_sub(first_seq)?).ok()?;
            match entries.get(i)? {
                Entry::Submit { spec, .. } => Some(JobSpec::clone(spec)),
                _ => None,
            }
        })
    }

    /// What users and operators can see of a core.
    fn observed(c: &Core) -> String {
        let jobs: Vec<_> = (1..c.next_job_id())
            .map(|id| match c.job(id) {
                Some(j) => format!(
                    "{} {} {:?} {} {:?} {:?} {:?} {:?} {:?}",
                    j.id,
                    j.tenant,
                    j.state,
                    j.attempt,
                    j.placement,
                    j.history
                        .iter()
                        .map(|h| (h.at_ms, h.event, &h.detail))
                        .collect::<Vec<_>>(),
                    j.ended_ms,
                    j.reason,
                    c.engine().explain(JobId(id)),
                ),
                None => format!("{id} refused: {:?}", c.refused_reason(id)),
            })
            .collect();
        let leases: Vec<_> = ["ph-r1-n-000", "ph-r1-n-001"]
            .iter()
            .map(|n| gosok_model::agent::NodeEpoch {
                name: n.to_string(),
                epoch: c.node_agent(n).map_or(0, |a| a.epoch),
            })
            .collect();
        format!(
            "{jobs:#?}\nagents {:?}\nassignments {:?}\nqueue {:?}\nnext {} now {} seq {} dirty {} tick {}\npending {:?}\ncounters {:?}\ntokens {:?}\nnodes {:?}\ncluster {:?}\nidempotency {:?} {:?}\nmeter {:?} {:?}",
            c.node_agents(),
            c.assignments("a1", &leases, 10),
            c.engine().queue(),
            c.next_job_id(),
            c.now_s(),
            c.seq(),
            c.dirty,
            c.needs_tick(),
            c.pending_by_tenant(),
            c.counters,
            c.tokens()
                .map(|t| (&t.id, &t.tenant, t.revoked, c.token(&[0x11; 32]).is_some()))
                .collect::<Vec<_>>(),
            c.node_states(),
            c.cluster(),
            c.idempotent("lab", "a"),
            c.idempotent("lab", "b"),
            c.meter().rows(),
            c.meter().open_rows(c.now_s()),
        )
    }

    #[test]
    fn a_restored_core_goes_on_as_the_original_from_every_point() {
        let entries = entries();
        for k in 0..=entries.len() {
            let mut a = core();
            let mut seq = a.seq();
            let first_seq = seq + 1;
            a.specs = log_specs(first_seq, entries.clone());
            for e in &entries[..k] {
                seq += 1;
                let _ = a.apply(seq, seq * 1000, e);
            }
            let bytes = a.snapshot().unwrap();
            let specs = log_specs(first_seq, entries.clone());
            let mut b = Core::restore(&bytes, a.cfg.clone(), specs).unwrap();
            assert_eq!(observed(&a), observed(&b), "right after restoring at {k}");
            for e in &entries[k..] {
                seq += 1;
                let (x, y) = (a.apply(seq, seq * 1000, e), b.apply(seq, seq * 1000, e));
                // Everything but the pass's duration.
                let x = x.map(|x| (x.decisions, x.changed));
                let y = y.map(|y| (y.decisions, y.changed));
                assert_eq!(x, y, "entry {seq} after {k}");
            }
            assert_eq!(observed(&a), observed(&b), "at the end, restored at {k}");
            b.engine().check_invariants().unwrap();
        }
        // The stream exercised what it should.
        let mut c = core();
        c.specs = log_specs(c.seq() + 1, entries.clone());
        let refused = entries
            .iter()
            .enumerate()
            .filter(|(i, e)| c.apply(3 + *i as u64, 0, e).is_err())
            .count();
        assert_eq!(refused, 1, "one of the two reports is refused");
        let states: Vec<_> = (1..=6).map(|id| c.job(id).map(|j| j.state)).collect();
        assert!(states.contains(&Some(JobState::Running)), "{states:?}");
        assert!(states.contains(&Some(JobState::Cancelled)), "{states:?}");
        assert!(states.contains(&Some(JobState::Succeeded)), "{states:?}");
        assert!(states.contains(&None), "a refused job: {states:?}");
        assert!(c.node_agent("ph-r1-n-000").unwrap().lost);
    }

    #[test]
    fn names_added_since_are_read_back() {
        let n: &'static str = static_name::<serde::de::value::Error>("lost").unwrap();
        assert_eq!(n, "lost");
        let again: &'static str = static_name::<serde::de::value::Error>("lost").unwrap();
        assert!(std::ptr::eq(n, again), "made static once");
        assert!(std::ptr::eq(
            static_name::<serde::de::value::Error>("started").unwrap(),
            STATIC_NAMES[0]
        ));
    }

    /// FNV-1a: a stable fingerprint, whatever the standard library's hasher does.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// The snapshot format is not self-describing: a snapshot written before a field was
    /// added to `Image` or a type in it (`JobRecord`, `TokenRecord`, `Counters`, ...) would be
    /// misread after. This fingerprint of a fixed core's image (the engine's part has its own
    /// guard) changes with the encoding. When it fails: if a serialized type changed, bump
    /// `CORE_SNAPSHOT_FORMAT`; then update the expected value.
    #[test]
    fn the_image_of_a_fixed_core_is_stable() {
        let mut c = core();
        // One token and one idempotency key: no hash map order to depend on.
        let entries = entries();
        // The agents' claim, a tenant, a submission with a key and a command, a tick.
        for (seq, i) in [(3, 0), (4, 1), (5, 3), (6, 7)] {
            c.apply(seq, seq * 1000, &entries[i]).unwrap();
        }
        let bytes = c.snapshot().unwrap();
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        let image = &bytes[20 + len..];
        assert_eq!(
            (CORE_SNAPSHOT_FORMAT, image.len(), fnv(image)),
            (3, 1043, 1883410626447376658),
            "the core's snapshot image changed: see this test's comment"
        );
    }

    #[test]
    fn another_engine_configuration_or_a_damaged_snapshot_is_refused() {
        let c = core();
        let bytes = c.snapshot().unwrap();
        let other = EngineConfig {
            seed: 7,
            ..c.cfg.clone()
        };
        let e = Core::restore(&bytes, other, Box::new(|_| None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("configuration"), "{e}");
        let cut = Core::restore(&bytes[..bytes.len() - 3], c.cfg.clone(), Box::new(|_| None));
        assert!(cut.is_err());
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(CORE_SNAPSHOT_FORMAT + 1).to_le_bytes());
        let e = Core::restore(&newer, c.cfg.clone(), Box::new(|_| None))
            .err()
            .unwrap();
        assert!(e.to_string().contains("format"), "{e}");
    }
}
