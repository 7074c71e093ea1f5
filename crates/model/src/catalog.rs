//! The accelerator catalog: what each accelerator model is, from its datasheet.
//!
//! The built-in catalog is `catalog/accelerators.toml` in the repository; operators extend it
//! with their own TOML in the same format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{SpecError, check_f64, check_name, check_range};

/// The catalog gosok ships with.
pub const BUILTIN_CATALOG_TOML: &str = include_str!("../../../catalog/accelerators.toml");

/// Most models one highway can know; the engine keeps model sets as 128-bit masks.
pub const MAX_MODELS: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceleratorModel {
    pub name: String,
    pub vendor: String,
    /// Family used by quotas ("nvidia-hopper"): a quota may name a model or a class.
    pub class: String,
    pub hbm_gib: u32,
    pub board_power_w: u32,
    /// Training throughput relative to an H100 SXM (= 1.0).
    pub relative_throughput: f64,
    /// Whether one device can be shared by tasks asking for fractions of it.
    pub shareable: bool,
    /// Other names the same model has in traces and tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Where the figures come from.
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<AcceleratorModel>,
}

/// Index of a model in its catalog.
pub type ModelId = u16;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    models: Vec<AcceleratorModel>,
    by_name: BTreeMap<String, ModelId>,
}

impl Catalog {
    /// The built-in catalog. It is part of the binary and tested, so it always parses.
    pub fn builtin() -> Catalog {
        match Catalog::from_toml(BUILTIN_CATALOG_TOML) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in catalog is invalid: {e}"),
        }
    }

    pub fn from_toml(text: &str) -> Result<Catalog, SpecError> {
        let mut c = Catalog::default();
        c.extend_from_toml(text)?;
        Ok(c)
    }

    /// Adds the models of another catalog file; a name already known is an error, so a
    /// user extension cannot silently change a datasheet figure.
    pub fn extend_from_toml(&mut self, text: &str) -> Result<(), SpecError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| SpecError::new("catalog", e.to_string()))?;
        for (i, m) in file.model.into_iter().enumerate() {
            self.add(m).map_err(|e| SpecError {
                field: format!("model[{i}].{}", e.field),
                message: e.message,
            })?;
        }
        Ok(())
    }

    pub fn add(&mut self, m: AcceleratorModel) -> Result<ModelId, SpecError> {
        check_name("name", &m.name)?;
        check_name("class", &m.class)?;
        if m.vendor.trim().is_empty() {
            return Err(SpecError::new("vendor", "must not be empty"));
        }
        check_range("hbm_gib", m.hbm_gib.into(), 0, 1 << 20)?;
        check_range("board_power_w", m.board_power_w.into(), 1, 100_000)?;
        check_f64("relative_throughput", m.relative_throughput, 0.0, 1000.0)?;
        if m.source.trim().is_empty() {
            return Err(SpecError::new(
                "source",
                "cite the datasheet the figures come from",
            ));
        }
        if self.models.len() >= MAX_MODELS {
            return Err(SpecError::new(
                "name",
                format!("a catalog holds at most {MAX_MODELS} models"),
            ));
        }
        let id = self.models.len() as ModelId;
        for (j, n) in std::iter::once(&m.name).chain(&m.aliases).enumerate() {
            let field = if j == 0 {
                "name".to_string()
            } else {
                format!("aliases[{}]", j - 1)
            };
            check_name(&field, n)?;
            if self.by_name.contains_key(n) {
                return Err(SpecError::new(
                    field,
                    format!("model {n:?} is already in the catalog"),
                ));
            }
        }
        for n in std::iter::once(&m.name).chain(&m.aliases) {
            self.by_name.insert(n.clone(), id);
        }
        self.models.push(m);
        Ok(id)
    }

    /// Looks a model up by its name or one of its aliases.
    pub fn id(&self, name: &str) -> Option<ModelId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: ModelId) -> &AcceleratorModel {
        &self.models[id as usize]
    }

    pub fn models(&self) -> &[AcceleratorModel] {
        &self.models
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The catalog's own spelling of a model name, alias or class written in another case
    /// (`h100` → `H100`); None when nothing matches, whatever the case.
    pub fn canonical(&self, key: &str) -> Option<&str> {
        self.names()
            .find(|n| *n == key)
            .or_else(|| self.names().find(|n| n.eq_ignore_ascii_case(key)))
    }

    /// The known name, alias or class closest to `key`, when one is close (a typo).
    pub fn suggest(&self, key: &str) -> Option<&str> {
        let key_l = key.to_ascii_lowercase();
        self.names()
            .map(|n| (edit_distance(&key_l, &n.to_ascii_lowercase()), n))
            .filter(|&(d, n)| d <= 2.max(n.len() / 3))
            .min_by_key(|&(d, _)| d)
            .map(|(_, n)| n)
    }

    /// Every name, alias and class, each once.
    fn names(&self) -> impl Iterator<Item = &str> {
        let mut seen = std::collections::BTreeSet::new();
        self.models
            .iter()
            .flat_map(|m| {
                std::iter::once(m.name.as_str())
                    .chain(m.aliases.iter().map(String::as_str))
                    .chain(std::iter::once(m.class.as_str()))
            })
            .filter(move |n| seen.insert(*n))
    }

    /// Models whose name, alias or class is `key`.
    pub fn matching(&self, key: &str) -> Vec<ModelId> {
        if let Some(id) = self.id(key) {
            return vec![id];
        }
        (0..self.models.len() as ModelId)
            .filter(|&i| self.models[i as usize].class == key)
            .collect()
    }
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_any_case_and_typos_get_a_suggestion() {
        let c = Catalog::builtin();
        assert_eq!(c.canonical("h100"), Some("H100"));
        assert_eq!(c.canonical("H100"), Some("H100"));
        assert_eq!(c.canonical("rngd"), Some("RNGD"));
        assert_eq!(c.canonical("nope"), None);
        assert_eq!(c.suggest("H1000"), Some("H100"));
        assert_eq!(c.suggest("b20"), Some("B200"));
        assert_eq!(c.suggest("completely-unrelated"), None);
    }

    #[test]
    fn builtin_catalog_has_the_required_models_with_sources() {
        let c = Catalog::builtin();
        for name in [
            "H100",
            "H200",
            "B200",
            "GB200",
            "MI300X",
            "RNGD",
            "ATOM",
            "REBEL",
            "V100-16GB",
            "V100-32GB",
            "P100",
            "T4",
            "A10",
            "G2",
            "G3",
        ] {
            let id = c
                .id(name)
                .unwrap_or_else(|| panic!("{name} missing from the catalog"));
            assert!(!c.get(id).source.is_empty());
        }
        let h100 = c.get(c.id("H100").unwrap());
        assert_eq!((h100.hbm_gib, h100.board_power_w), (80, 700));
        let mi = c.get(c.id("MI300X").unwrap());
        assert_eq!((mi.hbm_gib, mi.board_power_w), (192, 750));
    }

    #[test]
    fn a_duplicate_or_bad_model_is_refused_with_its_field() {
        let mut c = Catalog::builtin();
        let e = c
            .extend_from_toml(
                "[[model]]\nname='H100'\nvendor='x'\nclass='c'\nhbm_gib=1\nboard_power_w=1\nrelative_throughput=1.0\nshareable=false\nsource='s'\n",
            )
            .unwrap_err();
        assert_eq!(e.field, "model[0].name");
        let e = c
            .extend_from_toml(
                "[[model]]\nname='X1'\nvendor='x'\nclass='c'\nhbm_gib=1\nboard_power_w=0\nrelative_throughput=1.0\nshareable=false\nsource='s'\n",
            )
            .unwrap_err();
        assert_eq!(e.field, "model[0].board_power_w");
        let e = c.extend_from_toml("[[model]]\nname=3\n").unwrap_err();
        assert_eq!(e.field, "catalog");
    }
}
