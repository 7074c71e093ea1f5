//! The Helios (SC'21) comparison on Microsoft Philly: our FIFO, SJF and SRTF (and gosok) on
//! the trace, side by side with the averages Helios published
//! (`helios-qssf-philly/{jct,que}_avg_consolidate.csv`: per VC and `all`, in seconds).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::csv::Table;
use crate::error::InputError;
use crate::report::human_s;

/// Published averages: (scope, policy) → seconds; scope is a VC or `all`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    pub scopes: Vec<String>,
    pub jct_s: BTreeMap<(String, String), f64>,
    pub queue_s: BTreeMap<(String, String), f64>,
}

/// The folder layout of `shared/traces/philly-pollux`.
pub struct PhillyFiles {
    pub jobs: PathBuf,
    pub vcs: PathBuf,
    pub jct: PathBuf,
    pub queue: PathBuf,
}

impl PhillyFiles {
    pub fn in_dir(dir: &Path) -> PhillyFiles {
        let h = dir.join("helios-qssf-philly");
        PhillyFiles {
            jobs: dir.join("philly.csv"),
            vcs: h.join("philly_vc.csv"),
            jct: h.join("jct_avg_consolidate.csv"),
            queue: h.join("que_avg_consolidate.csv"),
        }
    }
}

/// Reads one published table: `vc,fifo_consolidate,sjf_consolidate,...`.
fn read_table(
    path: &Path,
    into: &mut BTreeMap<(String, String), f64>,
    scopes: &mut Vec<String>,
) -> Result<(), InputError> {
    let t = Table::read(path)?;
    let vc = t.column("vc")?;
    let policies: Vec<(usize, String)> = t
        .header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_suffix("_consolidate").map(|p| (i, p.to_string())))
        .collect();
    if policies.is_empty() {
        return Err(InputError::at(
            path,
            1,
            1,
            "no <policy>_consolidate columns in the header",
        ));
    }
    for r in &t.rows {
        let scope = t.text(r, vc)?.to_string();
        if !scopes.contains(&scope) {
            scopes.push(scope.clone());
        }
        for (i, p) in &policies {
            let v = t.number(r, crate::csv::Col { index: *i })?;
            into.insert((scope.clone(), p.clone()), v);
        }
    }
    Ok(())
}

pub fn read_published(files: &PhillyFiles) -> Result<Published, InputError> {
    let mut p = Published::default();
    read_table(&files.jct, &mut p.jct_s, &mut p.scopes)?;
    read_table(&files.queue, &mut p.queue_s, &mut p.scopes)?;
    Ok(p)
}

/// One cell of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub ours_s: f64,
    pub published_s: Option<f64>,
    /// ours / published.
    pub ratio: Option<f64>,
}

impl Pair {
    fn new(ours_s: f64, published_s: Option<f64>) -> Pair {
        Pair {
            ours_s,
            published_s,
            ratio: published_s.filter(|&p| p > 0.0).map(|p| ours_s / p),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeRow {
    /// A VC, or `all` (every job of every VC).
    pub scope: String,
    pub jobs: u64,
    /// Policy → average JCT and average queueing delay, ours and published.
    pub jct: BTreeMap<String, Pair>,
    pub queue: BTreeMap<String, Pair>,
}

/// Checks of the acceptance criteria, as measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checks {
    /// FIFO > SJF > SRTF in average JCT (all VCs).
    pub jct_order_fifo_sjf_srtf: Option<bool>,
    /// FIFO > SJF > SRTF in average queueing delay (all VCs).
    pub queue_order_fifo_sjf_srtf: Option<bool>,
    /// gosok's average JCT over SRTF's (target ≤ 1.3).
    pub gosok_over_srtf_jct: Option<f64>,
    /// FIFO's average JCT over gosok's (target ≥ 2).
    pub fifo_over_gosok_jct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub policies: Vec<String>,
    /// Each policy's runtime estimates, in the order of `policies`.
    pub estimates: Vec<String>,
    pub rows: Vec<ScopeRow>,
    pub checks: Checks,
}

/// What one run contributes: its policy and (scope → jobs, avg JCT, avg queue).
pub struct RunAverages {
    pub policy: String,
    /// Where its runtime estimates came from (oracle, given, history).
    pub estimates: String,
    pub all: (u64, f64, f64),
    pub by_tenant: BTreeMap<String, (u64, f64, f64)>,
}

impl RunAverages {
    pub fn of(r: &crate::Report) -> RunAverages {
        RunAverages {
            policy: r.policy.clone(),
            estimates: r.estimates.clone(),
            all: (r.jobs_completed, r.avg_jct_s, r.avg_queue_s),
            by_tenant: r
                .tenants
                .iter()
                .map(|t| {
                    (
                        t.tenant.clone(),
                        (t.jobs_completed, t.avg_jct_s, t.avg_queue_s),
                    )
                })
                .collect(),
        }
    }
}

pub fn compare(runs: &[RunAverages], published: &Published) -> Comparison {
    let mut scopes: Vec<String> = published
        .scopes
        .iter()
        .filter(|s| *s != "all")
        .cloned()
        .collect();
    for r in runs {
        for t in r.by_tenant.keys() {
            if !scopes.contains(t) {
                scopes.push(t.clone());
            }
        }
    }
    scopes.push("all".into());
    let rows = scopes
        .iter()
        .map(|scope| {
            let mut jct = BTreeMap::new();
            let mut queue = BTreeMap::new();
            let mut jobs = 0;
            for r in runs {
                let ours = if scope == "all" {
                    Some(r.all)
                } else {
                    r.by_tenant.get(scope).copied()
                };
                let Some((n, j, q)) = ours else { continue };
                jobs = n;
                let key = (scope.clone(), r.policy.clone());
                jct.insert(
                    r.policy.clone(),
                    Pair::new(j, published.jct_s.get(&key).copied()),
                );
                queue.insert(
                    r.policy.clone(),
                    Pair::new(q, published.queue_s.get(&key).copied()),
                );
            }
            ScopeRow {
                scope: scope.clone(),
                jobs,
                jct,
                queue,
            }
        })
        .collect::<Vec<_>>();
    let all = rows.last();
    let get = |m: &BTreeMap<String, Pair>, p: &str| m.get(p).map(|x| x.ours_s);
    let order = |m: &BTreeMap<String, Pair>| -> Option<bool> {
        let (f, s, r) = (get(m, "fifo")?, get(m, "sjf")?, get(m, "srtf")?);
        Some(f > s && s > r)
    };
    let checks = Checks {
        jct_order_fifo_sjf_srtf: all.and_then(|a| order(&a.jct)),
        queue_order_fifo_sjf_srtf: all.and_then(|a| order(&a.queue)),
        gosok_over_srtf_jct: all.and_then(|a| Some(get(&a.jct, "gosok")? / get(&a.jct, "srtf")?)),
        fifo_over_gosok_jct: all.and_then(|a| Some(get(&a.jct, "fifo")? / get(&a.jct, "gosok")?)),
    };
    Comparison {
        policies: runs.iter().map(|r| r.policy.clone()).collect(),
        estimates: runs.iter().map(|r| r.estimates.clone()).collect(),
        rows,
        checks,
    }
}

pub fn table(c: &Comparison) -> String {
    let mut s = String::new();
    for (what, pick) in [
        (
            "average JCT",
            (|r: &ScopeRow| &r.jct) as fn(&ScopeRow) -> &BTreeMap<String, Pair>,
        ),
        ("average queueing delay", |r: &ScopeRow| &r.queue),
    ] {
        let _ = writeln!(s, "{what} (s): ours / Helios published (ours ÷ published)");
        let _ = write!(s, "{:<8}{:>7}", "VC", "jobs");
        for p in &c.policies {
            let _ = write!(s, "{p:>30}");
        }
        s.push('\n');
        for r in &c.rows {
            let _ = write!(s, "{:<8}{:>7}", r.scope, r.jobs);
            for p in &c.policies {
                let cell = match pick(r).get(p) {
                    None => "-".to_string(),
                    Some(x) => match (x.published_s, x.ratio) {
                        (Some(pb), Some(ra)) => {
                            format!("{:.0} / {:.0} ({ra:.2})", x.ours_s, pb)
                        }
                        _ => format!("{:.0} / -", x.ours_s),
                    },
                };
                let _ = write!(s, "{cell:>30}");
            }
            s.push('\n');
        }
        s.push('\n');
    }
    let ck = &c.checks;
    let yes = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    };
    let _ = writeln!(
        s,
        "Helios ordering FIFO > SJF > SRTF (all VCs): JCT {}, queueing delay {}",
        yes(ck.jct_order_fifo_sjf_srtf),
        yes(ck.queue_order_fifo_sjf_srtf)
    );
    let est = |p: &str| {
        c.policies
            .iter()
            .position(|x| x == p)
            .and_then(|i| c.estimates.get(i))
            .map_or("-", |e| e.as_str())
    };
    if let Some(r) = ck.gosok_over_srtf_jct {
        let _ = writeln!(
            s,
            "gosok (estimates: {}) avg JCT / SRTF (estimates: {}) avg JCT: {r:.2} (target <= 1.3: {})",
            est("gosok"),
            est("srtf"),
            if r <= 1.3 { "met" } else { "missed" }
        );
    }
    if let Some(r) = ck.fifo_over_gosok_jct {
        let _ = writeln!(
            s,
            "FIFO avg JCT / gosok avg JCT: {r:.2} (target >= 2: {})",
            if r >= 2.0 { "met" } else { "missed" }
        );
    }
    if let Some(all) = c.rows.last() {
        for (p, x) in &all.jct {
            let _ = writeln!(s, "  {p}: avg JCT {}", human_s(x.ours_s));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_tables_read_and_pair_with_runs() {
        let dir = std::env::temp_dir().join(format!("gosok-philly-pub-{}", std::process::id()));
        let h = dir.join("helios-qssf-philly");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("jct_avg_consolidate.csv"),
            "vc,fifo_consolidate,sjf_consolidate,srtf_consolidate,qssf_consolidate\na,100,50,40,45\nall,100,50,40,45\n",
        )
        .unwrap();
        std::fs::write(
            h.join("que_avg_consolidate.csv"),
            "vc,fifo_consolidate,sjf_consolidate,srtf_consolidate,qssf_consolidate\na,60,10,1,5\nall,60,10,1,5\n",
        )
        .unwrap();
        let p = read_published(&PhillyFiles::in_dir(&dir)).unwrap();
        assert_eq!(p.scopes, ["a", "all"]);
        assert_eq!(p.jct_s[&("all".into(), "srtf".into())], 40.0);
        let run = |policy: &str, j: f64, q: f64| RunAverages {
            policy: policy.into(),
            estimates: "given".into(),
            all: (10, j, q),
            by_tenant: [("a".to_string(), (10, j, q))].into(),
        };
        let c = compare(
            &[
                run("fifo", 200.0, 120.0),
                run("sjf", 60.0, 12.0),
                run("srtf", 50.0, 2.0),
                run("gosok", 60.0, 10.0),
            ],
            &p,
        );
        let all = c.rows.last().unwrap();
        assert_eq!(all.scope, "all");
        assert_eq!(all.jct["fifo"].ratio, Some(2.0));
        assert_eq!(all.queue["gosok"].published_s, None);
        assert_eq!(c.checks.jct_order_fifo_sjf_srtf, Some(true));
        assert_eq!(c.checks.gosok_over_srtf_jct, Some(1.2));
        assert!(table(&c).contains("200 / 100 (2.00)"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
