//! Small identifiers and bit sets the engine uses on its hot paths.

use serde::{Deserialize, Serialize};

use gosok_model::ModelId;

/// A job's identity, chosen by whoever submits it (controller or simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub type NodeIdx = u32;
pub type SiteIdx = u16;
pub type RackIdx = u32;
pub type DomainIdx = u32;
pub type TenantIdx = u16;

/// A set of catalog models (the catalog holds at most 128).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ModelSet(pub u128);

impl ModelSet {
    pub fn all(n_models: usize) -> ModelSet {
        if n_models >= 128 {
            ModelSet(u128::MAX)
        } else {
            ModelSet((1u128 << n_models) - 1)
        }
    }
    pub fn with(self, m: ModelId) -> ModelSet {
        ModelSet(self.0 | 1 << m)
    }
    pub fn contains(self, m: ModelId) -> bool {
        self.0 >> m & 1 == 1
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn and(self, o: ModelSet) -> ModelSet {
        ModelSet(self.0 & o.0)
    }
    pub fn iter(self) -> impl Iterator<Item = ModelId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let m = bits.trailing_zeros() as ModelId;
                bits &= bits - 1;
                m
            })
        })
    }
}

/// A set of sites (a highway has at most 64).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SiteSet(pub u64);

impl SiteSet {
    pub fn all(n_sites: usize) -> SiteSet {
        if n_sites >= 64 {
            SiteSet(u64::MAX)
        } else {
            SiteSet((1u64 << n_sites) - 1)
        }
    }
    pub fn contains(self, s: SiteIdx) -> bool {
        self.0 >> s & 1 == 1
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = SiteIdx> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let s = bits.trailing_zeros() as SiteIdx;
                bits &= bits - 1;
                s
            })
        })
    }
}

/// A fast, fixed (unseeded) hasher for integer keys. The engine never lets a map's iteration
/// order decide anything, but a fixed hasher keeps even debug output reproducible.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64)
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64)
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }
}

pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A seeded 64-bit mix (splitmix64): deterministic tie-breaking that does not favour low
/// node numbers.
pub fn mix64(seed: u64, x: u64) -> u64 {
    let mut z = seed ^ x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_iterate_their_members_in_order() {
        let m = ModelSet::default().with(0).with(5).with(127);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 5, 127]);
        assert_eq!(SiteSet(0b1010).iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(SiteSet::all(64).iter().count(), 64);
        assert_eq!(ModelSet::all(128).iter().count(), 128);
    }
}
