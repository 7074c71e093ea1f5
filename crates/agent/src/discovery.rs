//! Which accelerators a node has: discovered on the machine (NVML) or declared (`--fake-accelerators`).

use gosok_model::Catalog;

/// One accelerator of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    /// The catalog's model name when the device is known to it, else the name the driver gave.
    pub model: String,
}

/// A source of accelerators; one implementation per vendor library.
pub trait Discovery {
    /// The devices of this machine; none (not an error) when the vendor's library is absent.
    fn discover(&self) -> anyhow::Result<Vec<Device>>;
}

/// Most accelerators `--fake-accelerators` accepts per node.
pub const MAX_FAKE_ACCELERATORS: u32 = 256;

/// Devices declared on the command line, for virtual nodes and machines without accelerators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fake {
    pub devices: Vec<Device>,
}

impl Fake {
    /// Parses `8xH100`, `none` or `0`; the model must be in `catalog` (name or alias).
    pub fn parse(spec: &str, catalog: &Catalog) -> anyhow::Result<Fake> {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "--fake-accelerators {spec:?}: {why} (expected COUNTxMODEL like 8xH100, or none)"
            )
        };
        let s = spec.trim();
        if s.eq_ignore_ascii_case("none") || s == "0" {
            return Ok(Fake { devices: vec![] });
        }
        let Some((count, model)) = s.split_once(['x', 'X']) else {
            return Err(bad("no 'x' between the count and the model"));
        };
        if count.is_empty() {
            return Err(bad("the count is missing"));
        }
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the count must be a whole number"));
        }
        let count: u32 = count
            .parse()
            .ok()
            .filter(|&n| n <= MAX_FAKE_ACCELERATORS)
            .ok_or_else(|| {
                bad(&format!(
                    "the count must be at most {MAX_FAKE_ACCELERATORS}"
                ))
            })?;
        if model.is_empty() {
            return Err(bad("the model is missing"));
        }
        let id = catalog
            .id(model)
            .or_else(|| {
                catalog
                    .models()
                    .iter()
                    .position(|m| {
                        std::iter::once(&m.name)
                            .chain(&m.aliases)
                            .any(|n| n.eq_ignore_ascii_case(model))
                    })
                    .map(|i| i as u16)
            })
            .ok_or_else(|| {
                let known: Vec<&str> = catalog.models().iter().map(|m| m.name.as_str()).collect();
                bad(&format!(
                    "unknown accelerator model {model:?}; the catalog knows {}",
                    known.join(", ")
                ))
            })?;
        let name = catalog.get(id).name.clone();
        Ok(Fake {
            devices: (0..count)
                .map(|index| Device {
                    index,
                    model: name.clone(),
                })
                .collect(),
        })
    }
}

impl Discovery for Fake {
    fn discover(&self) -> anyhow::Result<Vec<Device>> {
        Ok(self.devices.clone())
    }
}

/// NVIDIA devices through NVML, opened at run time.
pub struct Nvml {
    pub catalog: Catalog,
    /// The library to open; `libnvidia-ml.so.1` (the driver's) by default.
    pub library: String,
}

impl Nvml {
    pub fn new(catalog: Catalog) -> Nvml {
        Nvml {
            catalog,
            library: "libnvidia-ml.so.1".to_string(),
        }
    }
}

const NVML_SUCCESS: i32 = 0;

impl Discovery for Nvml {
    fn discover(&self) -> anyhow::Result<Vec<Device>> {
        // SAFETY: loading the driver's NVML runs its initialisers, which is what NVML is for;
        // the symbols' signatures below are NVML's documented C ABI.
        let lib = match unsafe { libloading::Library::new(&self.library) } {
            Ok(l) => l,
            Err(_) => return Ok(vec![]),
        };
        type Init = unsafe extern "C" fn() -> i32;
        type Count = unsafe extern "C" fn(*mut u32) -> i32;
        type Handle = unsafe extern "C" fn(u32, *mut *mut std::ffi::c_void) -> i32;
        type Name = unsafe extern "C" fn(*mut std::ffi::c_void, *mut std::ffi::c_char, u32) -> i32;
        unsafe {
            let init: libloading::Symbol<Init> = lib.get(b"nvmlInit_v2\0")?;
            let shutdown: libloading::Symbol<Init> = lib.get(b"nvmlShutdown\0")?;
            let count: libloading::Symbol<Count> = lib.get(b"nvmlDeviceGetCount_v2\0")?;
            let handle: libloading::Symbol<Handle> = lib.get(b"nvmlDeviceGetHandleByIndex_v2\0")?;
            let name: libloading::Symbol<Name> = lib.get(b"nvmlDeviceGetName\0")?;
            let rc = init();
            if rc != NVML_SUCCESS {
                // A library without a working driver behind it (containers, CPU hosts).
                return Ok(vec![]);
            }
            let result = (|| {
                let mut n = 0u32;
                let rc = count(&mut n);
                if rc != NVML_SUCCESS {
                    anyhow::bail!("nvmlDeviceGetCount_v2 failed with NVML error {rc}");
                }
                let mut out = Vec::new();
                for i in 0..n {
                    let mut h = std::ptr::null_mut();
                    let rc = handle(i, &mut h);
                    if rc != NVML_SUCCESS {
                        anyhow::bail!(
                            "nvmlDeviceGetHandleByIndex_v2({i}) failed with NVML error {rc}"
                        );
                    }
                    let mut buf = [0 as std::ffi::c_char; 96];
                    let rc = name(h, buf.as_mut_ptr(), buf.len() as u32);
                    if rc != NVML_SUCCESS {
                        anyhow::bail!("nvmlDeviceGetName({i}) failed with NVML error {rc}");
                    }
                    let raw = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy();
                    out.push(Device {
                        index: i,
                        model: catalog_model(&self.catalog, "NVIDIA", &raw)
                            .unwrap_or_else(|| raw.trim().to_string()),
                    });
                }
                Ok(out)
            })();
            shutdown();
            result
        }
    }
}

/// The catalog model a driver's device name ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-32GB")
/// stands for, among `vendor`'s models. A catalog name matches when its base ("A100") is one of
/// the device name's words and its memory suffix ("80GB"), if it has one, is another; the most
/// specific match wins.
pub fn catalog_model(catalog: &Catalog, vendor: &str, raw: &str) -> Option<String> {
    let upper = raw.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split([' ', '-', '_'])
        .filter(|w| !w.is_empty())
        .collect();
    let mut best: Option<(usize, &str)> = None;
    for m in catalog.models() {
        if !m.vendor.eq_ignore_ascii_case(vendor) {
            continue;
        }
        for n in std::iter::once(&m.name).chain(&m.aliases) {
            let n = n.to_ascii_uppercase();
            let parts: Vec<&str> = n.split('-').collect();
            if !parts.iter().all(|p| words.contains(p)) {
                continue;
            }
            if best.is_none_or(|(score, _)| parts.len() > score) {
                best = Some((parts.len(), m.name.as_str()));
            }
        }
    }
    best.map(|(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Fake> {
        Fake::parse(s, &Catalog::builtin())
    }

    #[test]
    fn fake_accelerators_parse() {
        let f = parse("8xH100").unwrap();
        assert_eq!(f.devices.len(), 8);
        assert_eq!(
            f.devices[7],
            Device {
                index: 7,
                model: "H100".into()
            }
        );
        assert!(parse("none").unwrap().devices.is_empty());
        assert!(parse("0").unwrap().devices.is_empty());
        assert!(parse("0xH100").unwrap().devices.is_empty());
        // Aliases resolve to the catalog's name.
        assert_eq!(parse("2xV100M32").unwrap().devices[0].model, "V100-32GB");
        assert_eq!(parse("1xh200").unwrap().devices[0].model, "H200");
        assert_eq!(parse("256xH100").unwrap().devices.len(), 256);
    }

    #[test]
    fn fake_accelerators_reject_malformed_input() {
        for bad in [
            "8x",
            "x8H100",
            "-1xH100",
            "100000xH100",
            "257xH100",
            "8xNOPE",
            "H100",
            "",
            "8*H100",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--fake-accelerators"), "{bad}: {e}");
        }
        assert!(
            parse("8xNOPE")
                .unwrap_err()
                .to_string()
                .contains("unknown accelerator model")
        );
        assert!(
            parse("100000xH100")
                .unwrap_err()
                .to_string()
                .contains("at most 256")
        );
    }

    #[test]
    fn nvml_names_map_to_catalog_models() {
        let c = Catalog::builtin();
        let m = |raw: &str| catalog_model(&c, "NVIDIA", raw);
        assert_eq!(m("NVIDIA H100 80GB HBM3").as_deref(), Some("H100"));
        assert_eq!(m("NVIDIA H100 PCIe").as_deref(), Some("H100"));
        assert_eq!(m("NVIDIA H200").as_deref(), Some("H200"));
        assert_eq!(m("NVIDIA A100-SXM4-80GB").as_deref(), Some("A100-80GB"));
        assert_eq!(m("NVIDIA A100-SXM4-40GB").as_deref(), Some("A100-40GB"));
        assert_eq!(m("Tesla V100-SXM2-32GB").as_deref(), Some("V100-32GB"));
        assert_eq!(m("Tesla V100-SXM2-16GB").as_deref(), Some("V100-16GB"));
        assert_eq!(m("NVIDIA A10").as_deref(), Some("A10"));
        assert_eq!(m("Tesla T4").as_deref(), Some("T4"));
        assert_eq!(m("NVIDIA L40S").as_deref(), Some("L40S"));
        assert_eq!(m("NVIDIA B200").as_deref(), Some("B200"));
        assert_eq!(m("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn nvml_without_the_library_finds_no_devices() {
        let mut n = Nvml::new(Catalog::builtin());
        n.library = "libgosok-no-such-library.so.1".into();
        assert!(n.discover().unwrap().is_empty());
    }
}
