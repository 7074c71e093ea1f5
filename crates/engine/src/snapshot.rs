//! Engine snapshots: the engine's whole state as bytes, and back.
//!
//! The controller starts from its latest snapshot plus the events logged after it instead of
//! replaying its whole log. That is only sound if a restored engine decides exactly as the
//! original would from then on, so the snapshot carries every field as it is (queues, index
//! buckets, reservation, caches, decayed usage) rather than a summary to recompute from: only
//! the scorers (trait objects, rebuilt by name from the configuration) and the shape lookup
//! (a function of the shape list) are rebuilt. `tests/properties.rs` checks it: snapshot at a
//! random step, feed the same remaining events to both, and the decision logs must match.
//!
//! The encoding is bincode (variable-length integers): a million jobs load in well under a
//! second, where JSON would take several. Bincode is not self-describing, so the few types
//! whose serde form needs that (internally tagged enums, skipped fields) are written through
//! the mirror definitions below, whose fields the compiler checks against the originals.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash};

use gosok_model::{AcceleratorModel, Catalog};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{EngineConfig, QueuePolicy};
use crate::engine::Engine;
use crate::explain::{Blocker, WaitReason};

/// Bumped whenever any serialized engine type changes (a field added, removed, reordered or
/// retyped): an engine refuses a snapshot of another format, and the controller then replays
/// its whole log instead. The `a_snapshot_of_a_fixed_engine_is_stable` test fails when the
/// encoding changes, as a reminder.
pub const SNAPSHOT_FORMAT: u32 = 7;

const MAGIC: &[u8; 8] = b"gosokENG";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not an engine snapshot")]
    NotASnapshot,
    #[error("the engine snapshot is of format {found}; this gosok reads format {expected}")]
    Format { found: u32, expected: u32 },
    #[error("the engine snapshot cannot be encoded or decoded: {0}")]
    Codec(String),
    #[error("the engine snapshot does not describe a valid engine: {0}")]
    Invalid(String),
}

/// Little-endian, variable-length integers (most counts and ids are small), no size limit
/// (a snapshot of a large highway is hundreds of megabytes), trailing bytes refused.
pub fn codec() -> impl bincode::Options + Copy {
    bincode::DefaultOptions::new()
}

impl Engine {
    /// The engine's whole state; [`Engine::restore`] reads it back.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        use bincode::Options;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        codec()
            .serialize_into(&mut out, self)
            .map_err(|e| SnapshotError::Codec(e.to_string()))?;
        Ok(out)
    }

    /// An engine that decides exactly as the one that took `bytes` would have.
    pub fn restore(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        use bincode::Options;
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(SnapshotError::NotASnapshot)?;
        let (format, body) = body
            .split_first_chunk::<4>()
            .ok_or(SnapshotError::NotASnapshot)?;
        let found = u32::from_le_bytes(*format);
        if found != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                found,
                expected: SNAPSHOT_FORMAT,
            });
        }
        let mut e: Engine = codec()
            .deserialize(body)
            .map_err(|e| SnapshotError::Codec(e.to_string()))?;
        e.rebuild_after_restore()
            .map_err(|e| SnapshotError::Invalid(format!("{}: {}", e.field, e.message)))?;
        Ok(e)
    }
}

/// [`EngineConfig`] without its internally tagged queue policy.
#[derive(Serialize, Deserialize)]
#[serde(remote = "EngineConfig")]
pub(crate) struct ConfigDef {
    seed: u64,
    accelerator_utilisation: f64,
    fair_share_half_life_s: u64,
    scorers: Vec<(String, f64)>,
    score_candidates: usize,
    default_runtime_s: u64,
    overrun_grace_s: u64,
    default_max_retries: u64,
    max_preemption_attempts_per_pass: usize,
    #[serde(with = "QueuePolicyDef")]
    queue_policy: QueuePolicy,
    head_of_line_blocking: bool,
    backfill: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "QueuePolicy")]
enum QueuePolicyDef {
    FairShareLas(crate::config::Las),
    FairShare,
    Fifo,
    ShortestFirst,
    ShortestRemainingFirst { overhead_s: [u64; 3] },
}

/// [`WaitReason`], externally tagged.
#[derive(Serialize, Deserialize)]
#[serde(remote = "WaitReason")]
pub(crate) enum WaitReasonDef {
    Queued,
    ShareCap,
    Quota,
    GuaranteeUsed,
    NodesUnavailable,
    Resources { blocker: Blocker },
    Reserved { start_s: u64 },
}

/// [`AcceleratorModel`] with every field written (bincode cannot skip an empty one).
#[derive(Serialize, Deserialize)]
#[serde(remote = "AcceleratorModel")]
struct ModelDef {
    name: String,
    vendor: String,
    class: String,
    hbm_gib: u32,
    board_power_w: u32,
    relative_throughput: f64,
    shareable: bool,
    aliases: Vec<String>,
    source: String,
}

/// An accelerator model as snapshots write it (the controller's snapshot uses it too).
#[derive(Serialize, Deserialize)]
pub struct Model(#[serde(with = "ModelDef")] pub AcceleratorModel);

/// A catalog as its models in order; adding them again rebuilds the same name lookup.
pub(crate) mod catalog {
    use super::*;

    pub fn serialize<S: Serializer>(c: &Catalog, s: S) -> Result<S::Ok, S::Error> {
        // A catalog holds at most 128 models: the copy costs nothing.
        let models: Vec<Model> = c.models().iter().cloned().map(Model).collect();
        models.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Catalog, D::Error> {
        let mut c = Catalog::default();
        for Model(m) in Vec::<Model>::deserialize(d)? {
            c.add(m).map_err(|e| {
                serde::de::Error::custom(format!("catalog: {}: {}", e.field, e.message))
            })?;
        }
        Ok(c)
    }
}

/// A large sorted set read back in one bulk build: serde inserts element by element, each a
/// walk from the root, which for the queues of a million pending jobs costs a large share of
/// a restore. Written as serde writes a set.
pub(crate) mod sorted_set {
    use super::*;

    pub fn serialize<S: Serializer, T: Serialize>(
        set: &BTreeSet<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(set)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de> + Ord>(
        d: D,
    ) -> Result<BTreeSet<T>, D::Error> {
        // Sorted already (it was written in order): the sort in `from_iter` is one pass.
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

/// A large hash map read back at its full size at once, instead of growing (and rehashing)
/// from serde's cautious first guess. Written as serde writes a map.
pub(crate) mod sized_map {
    use super::*;
    use std::collections::HashMap;
    use std::marker::PhantomData;

    /// More than any highway's jobs: a damaged length cannot ask for unbounded memory up
    /// front (the map still grows past it if the entries are really there).
    const MAX_PREALLOCATED: usize = 1 << 22;

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize, H>(
        m: &HashMap<K, V, H>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m)
    }

    pub fn deserialize<'de, D, K, V, H>(d: D) -> Result<HashMap<K, V, H>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        H: BuildHasher + Default,
    {
        struct Visit<K, V, H>(PhantomData<(K, V, H)>);
        impl<'de, K, V, H> serde::de::Visitor<'de> for Visit<K, V, H>
        where
            K: Deserialize<'de> + Eq + Hash,
            V: Deserialize<'de>,
            H: BuildHasher + Default,
        {
            type Value = HashMap<K, V, H>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let n = a.size_hint().unwrap_or(0).min(MAX_PREALLOCATED);
                let mut m = HashMap::with_capacity_and_hasher(n, H::default());
                while let Some((k, v)) = a.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}
