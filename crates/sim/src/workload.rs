//! The simulator's input formats: the cluster file (the TOML `ClusterSpec` operators already
//! write) and the workload file (JSON Lines, one job a line).
//!
//! A workload line is the job spec the API accepts (`gosok_model::JobSpec`: `groups`,
//! `priority`, `preemptible`, `runtime_estimate_s`, ...) plus what only a trace knows:
//!
//! ```json
//! {"id":"j1","tenant":"snu-ai-lab","submit_s":0,"duration_s":3600,"groups":[{"accelerators":8}]}
//! ```
//!
//! - `tenant` (required): a tenant of the cluster file.
//! - `submit_s` (required): when the job arrives, seconds from the start of the trace.
//! - `duration_s` (required): how long it really runs (the engine never sees this; it learns
//!   that a job ended when its tasks end).
//! - `id` (optional): a name for reports; default `line-N`.
//! - `duration_measured_on` (optional): the accelerator model the duration was measured on.
//!   On another model the job runs `duration_s × relative_throughput(measured) /
//!   relative_throughput(actual)` (catalog figures; a gang runs at its slowest model's speed).
//!
//! Times may be decimals: `submit_s` is rounded down and `duration_s` up to whole seconds
//! (the engine's clock ticks in seconds). Blank lines and lines starting with `#` are skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use gosok_model::{Catalog, ClusterSpec, JobSpec};

use crate::error::{BadRows, InputError, Skipped, locate_toml_field, read_text};

/// One job of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub tenant: String,
    pub submit_s: u64,
    pub duration_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_measured_on: Option<String>,
    #[serde(flatten)]
    pub spec: JobSpec,
}

impl WorkloadJob {
    /// The job as one line of a workload file (no newline).
    pub fn to_line(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A workload read from a file, with the rows left out under `--skip-bad-rows`.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub jobs: Vec<WorkloadJob>,
    /// The line each job came from (for errors found later).
    pub lines: Vec<usize>,
    pub skipped: Skipped,
}

impl Workload {
    /// Every job's tenant must be declared in the cluster file; the first that is not is
    /// reported at its line.
    pub fn check_tenants(&self, path: &Path, cluster: &ClusterSpec) -> Result<(), InputError> {
        let known: std::collections::BTreeSet<&str> =
            cluster.tenant.iter().map(|t| t.name.as_str()).collect();
        for (j, line) in self.jobs.iter().zip(&self.lines) {
            if !known.contains(j.tenant.as_str()) {
                let list: Vec<&str> = known.iter().copied().collect();
                return Err(InputError::at(
                    path,
                    *line,
                    1,
                    format!(
                        "tenant {:?} is not declared in the cluster file (its tenants: {}); add a [[tenant]] or fix the name",
                        j.tenant,
                        if list.is_empty() {
                            "none".to_string()
                        } else {
                            list.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The keys a workload line has beside the job spec.
const OWN_KEYS: [&str; 5] = [
    "id",
    "tenant",
    "submit_s",
    "duration_s",
    "duration_measured_on",
];

/// Reads a workload file. Every job is checked here (spec, models, times) so that a bad line
/// is reported with its place before anything runs.
pub fn read_workload(path: &Path, catalog: &Catalog, bad: BadRows) -> Result<Workload, InputError> {
    let text = read_text(path)?;
    parse_workload(path, &text, catalog, bad)
}

/// Parses workload text as if it were the file at `path`.
pub fn parse_workload(
    path: &Path,
    text: &str,
    catalog: &Catalog,
    bad: BadRows,
) -> Result<Workload, InputError> {
    let mut w = Workload::default();
    let mut lines = 0usize;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        lines += 1;
        match parse_line(path, i + 1, line, catalog) {
            Ok(job) => {
                w.jobs.push(job);
                w.lines.push(i + 1);
            }
            Err(e) => w.skipped.handle(bad, e)?,
        }
    }
    if lines == 0 {
        return Err(InputError::at(
            path,
            1,
            1,
            "the workload file has no jobs; give one JSON object per line (see docs/SIMULATOR.md)",
        ));
    }
    Ok(w)
}

/// One top-level `"key": value` of a JSON object, by byte offsets into the line.
struct Member {
    key: String,
    key_at: usize,
    value: std::ops::Range<usize>,
}

/// Parses one workload line. The job spec is read from the line itself with the workload's
/// own keys blanked out (same length, so serde's error columns stay true).
fn parse_line(
    path: &Path,
    line_no: usize,
    line: &str,
    catalog: &Catalog,
) -> Result<WorkloadJob, InputError> {
    let err = |col: usize, problem: String| InputError::at(path, line_no, col, problem);
    let Some((open, close, members)) = scan_object(line) else {
        // Not a well-formed object: let serde_json say where and why.
        return Err(match serde_json::from_str::<serde_json::Value>(line) {
            Err(e) => err(e.column().max(1), format!("not valid JSON: {e}")),
            Ok(_) => err(1, "a line must be one JSON object (a job)".into()),
        });
    };
    let mut masked: Vec<u8> = vec![b' '; line.len()];
    masked[open] = b'{';
    masked[close] = b'}';
    let kept: Vec<&Member> = members
        .iter()
        .filter(|m| !OWN_KEYS.contains(&m.key.as_str()))
        .collect();
    for (k, m) in kept.iter().enumerate() {
        masked[m.key_at..m.value.end].copy_from_slice(&line.as_bytes()[m.key_at..m.value.end]);
        if k + 1 < kept.len() {
            masked[m.value.end] = b',';
        }
    }
    let masked = String::from_utf8(masked).map_err(|_| err(1, "not UTF-8 text".into()))?;
    let spec: JobSpec = serde_json::from_str(&masked).map_err(|e| {
        let mut msg = e.to_string();
        // serde_json appends " at line 1 column N"; the location is ours to give.
        if let Some(at) = msg.rfind(" at line ") {
            msg.truncate(at);
        }
        let mut col = e.column().max(1);
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            // Point at the key itself rather than past it.
            let key = rest.split('`').next().unwrap_or_default();
            col = locate_string(line, key).unwrap_or(col);
            msg.push_str(", or one of the workload's own: id, tenant, submit_s, duration_s, duration_measured_on");
        }
        err(col, msg)
    })?;
    let get = |key: &str| members.iter().find(|m| m.key == key);
    let col_of = |m: &Member| m.value.start + 1;
    let string = |key: &str| -> Result<Option<(String, usize)>, InputError> {
        let Some(m) = get(key) else { return Ok(None) };
        let v: String = serde_json::from_str(&line[m.value.clone()])
            .map_err(|_| err(col_of(m), format!("{key}: a string is expected")))?;
        Ok(Some((v, col_of(m))))
    };
    let number = |key: &str, what: &str| -> Result<f64, InputError> {
        let Some(m) = get(key) else {
            return Err(err(
                close + 1,
                format!("{key} is missing ({what}); see docs/SIMULATOR.md"),
            ));
        };
        let raw = line[m.value.clone()].trim();
        let v: f64 = serde_json::from_str(raw)
            .map_err(|_| err(col_of(m), format!("{key}: {raw} is not a number")))?;
        if v < 0.0 {
            return Err(err(
                col_of(m),
                format!("{key}: {raw} is negative; times and durations are seconds >= 0"),
            ));
        }
        if v > MAX_TIME_S {
            return Err(err(
                col_of(m),
                format!("{key}: {raw} is beyond {MAX_TIME_S} s (about 30 years)"),
            ));
        }
        Ok(v)
    };
    let Some((tenant, tcol)) = string("tenant")? else {
        return Err(err(
            close + 1,
            "tenant is missing (the tenant that submits the job)".into(),
        ));
    };
    gosok_model::error::check_name("tenant", &tenant).map_err(|e| err(tcol, e.to_string()))?;
    let submit_s = number("submit_s", "when the job arrives, in seconds")?.floor() as u64;
    let duration_s =
        number("duration_s", "how long the job really runs, in seconds")?.ceil() as u64;
    let id = string("id")?.map(|v| v.0);
    let measured = match string("duration_measured_on")? {
        None => None,
        Some((m, col)) => {
            let Some(mid) = catalog.id(&m) else {
                return Err(err(
                    col,
                    format!(
                        "duration_measured_on: {m:?} is not an accelerator model of the catalog"
                    ),
                ));
            };
            // Keep the catalog's own name, so that aliases of trace files resolve once.
            Some(catalog.get(mid).name.clone())
        }
    };
    spec.validate().map_err(|e| {
        let col = locate_json_path(line, &e.field).unwrap_or(1);
        err(col, e.to_string())
    })?;
    for (i, g) in spec.groups.iter().enumerate() {
        for (j, m) in g.models.iter().enumerate() {
            if catalog.matching(m).is_empty() {
                let field = format!("groups[{i}].models[{j}]");
                let col = locate_string(line, m).unwrap_or(1);
                return Err(err(
                    col,
                    format!(
                        "{field}: {m:?} is neither an accelerator model nor a class of the catalog"
                    ),
                ));
            }
        }
    }
    Ok(WorkloadJob {
        id,
        tenant,
        submit_s,
        duration_s,
        duration_measured_on: measured,
        spec,
    })
}

/// Largest time a workload may name: far beyond any trace, far from overflow.
const MAX_TIME_S: f64 = 1.0e9;

/// The 1-based column of the key a field path ends in (`groups[0].replicas` → `"replicas"`),
/// searched after the path's first key.
fn locate_json_path(line: &str, field: &str) -> Option<usize> {
    let keys: Vec<&str> = field
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .filter(|p| !p.is_empty())
        .collect();
    let mut from = 0usize;
    let mut found = None;
    for k in keys {
        let pat = format!("\"{k}\"");
        if let Some(at) = line[from..].find(&pat) {
            from += at;
            found = Some(from + 1);
        }
    }
    found
}

fn locate_string(line: &str, s: &str) -> Option<usize> {
    line.find(&format!("\"{s}\"")).map(|at| at + 1)
}

/// Finds the members of a one-line JSON object without building values: (offset of `{`,
/// offset of `}`, members). None if the line is not a well-formed object.
fn scan_object(line: &str) -> Option<(usize, usize, Vec<Member>)> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let open = i;
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some((open, i, members));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_at = i;
        let key_end = skip_string(b, i)?;
        let key: String = serde_json::from_str(&line[key_at..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let vstart = skip_ws(b, i + 1);
        let vend = skip_value(b, vstart)?;
        members.push(Member {
            key,
            key_at,
            value: vstart..vend,
        });
        i = skip_ws(b, vend);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                return (skip_ws(b, i + 1) == b.len()).then_some((open, i, members));
            }
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// `i` at a `"`; returns the offset just past the closing quote.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Returns the offset just past the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Writes a workload file: one job a line.
pub fn workload_text(jobs: &[WorkloadJob]) -> String {
    let mut s = String::with_capacity(jobs.len() * 160);
    for j in jobs {
        s.push_str(&j.to_line());
        s.push('\n');
    }
    s
}

/// Reads and checks a cluster file. Errors carry the line and column: TOML syntax errors from
/// the parser, and errors about a field (`node[3].accelerator`) at the line of that key.
pub fn read_cluster(path: &Path, catalog: &Catalog) -> Result<ClusterSpec, InputError> {
    let text = read_text(path)?;
    parse_cluster(path, &text, catalog)
}

pub fn parse_cluster(
    path: &Path,
    text: &str,
    catalog: &Catalog,
) -> Result<ClusterSpec, InputError> {
    let spec: ClusterSpec = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        InputError::at(path, line, column, e.message().trim().to_string())
    })?;
    if spec.node.is_empty() {
        return Err(InputError::at(
            path,
            1,
            1,
            "the cluster file declares no nodes; see examples/cluster.toml",
        ));
    }
    spec.resolve(catalog).map_err(|e| {
        let (line, column) = locate_toml_field(text, &e.field);
        InputError::at(path, line, column, e.to_string())
    })?;
    Ok(spec)
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workload, InputError> {
        parse_workload(
            Path::new("w.jsonl"),
            text,
            &Catalog::builtin(),
            BadRows::Fail,
        )
    }

    #[test]
    fn a_good_line_reads_with_its_own_keys_and_the_spec() {
        let w = parse(
            "# a comment\n\n{\"id\":\"a\",\"tenant\":\"t1\",\"submit_s\":1.7,\"groups\":[{\"accelerators\":8}],\"duration_s\":99.2,\"duration_measured_on\":\"V100M16\"}\n{\"groups\":[{\"replicas\":2,\"accelerators\":4,\"models\":[\"nvidia-hopper\"]}],\"tenant\":\"t2\",\"submit_s\":5,\"duration_s\":10,\"runtime_estimate_s\":20}\n",
        )
        .unwrap();
        assert_eq!(w.jobs.len(), 2);
        let a = &w.jobs[0];
        assert_eq!(a.id.as_deref(), Some("a"));
        assert_eq!((a.submit_s, a.duration_s), (1, 100));
        assert_eq!(a.duration_measured_on.as_deref(), Some("V100-16GB"));
        assert_eq!(a.spec.groups[0].accelerators, Some(8));
        let b = &w.jobs[1];
        assert_eq!(b.tenant, "t2");
        assert_eq!(b.spec.runtime_estimate_s, Some(20));
        assert_eq!(b.spec.total_accelerator_milli(), 8000);
        // What is written reads back the same.
        let again = parse(&workload_text(&w.jobs)).unwrap();
        assert_eq!(again.jobs, w.jobs);
    }

    #[test]
    fn each_kind_of_bad_line_names_line_column_and_problem() {
        let ok = r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"accelerators":1}]}"#;
        let cases: [(&str, &str); 10] = [
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":-5,"groups":[{"accelerators":1}]}"#,
                "w.jsonl:2:41: duration_s: -5 is negative",
            ),
            (
                r#"{"tenant":"t","submit_s":"soon","duration_s":5,"groups":[{"accelerators":1}]}"#,
                "w.jsonl:2:26: submit_s: \"soon\" is not a number",
            ),
            (
                r#"{"tenant":"t","duration_s":5,"groups":[{"accelerators":1}]}"#,
                "w.jsonl:2:59: submit_s is missing",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"accelerators":1,"models":["H999"]}]}"#,
                "w.jsonl:2:81: groups[0].models[0]: \"H999\" is neither",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"duration_measured_on":"Z80","groups":[{"accelerators":1}]}"#,
                "w.jsonl:2:66: duration_measured_on: \"Z80\" is not an accelerator model",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"replicas":0,"accelerators":1}]}"#,
                "w.jsonl:2:54: groups[0].replicas: ",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"accelerators":1}],"colour":"red"}"#,
                "w.jsonl:2:73: unknown field `colour`",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"accelerators":"x"}]}"#,
                "w.jsonl:2:71: invalid type: string \"x\"",
            ),
            (
                r#"{"tenant":"t","submit_s":0,"duration_s":5,"groups":[{"accelerators":1}"#,
                "w.jsonl:2:70: not valid JSON",
            ),
            (
                r#"{"tenant":"a b","submit_s":0,"duration_s":5,"groups":[{"accelerators":1}]}"#,
                "w.jsonl:2:11: tenant: \"a b\" contains ' '",
            ),
        ];
        for (line, want) in cases {
            let e = parse(&format!("{ok}\n{line}\n")).unwrap_err().to_string();
            assert!(e.starts_with(want), "{line}\n  got:  {e}\n  want: {want}");
        }
        let e = parse("\n# nothing\n").unwrap_err().to_string();
        assert!(
            e.starts_with("w.jsonl:1:1: the workload file has no jobs"),
            "{e}"
        );
    }

    #[test]
    fn bad_lines_are_counted_when_skipped() {
        let text = "{\"tenant\":\"t\",\"submit_s\":0,\"duration_s\":5,\"groups\":[{\"accelerators\":1}]}\nnot json\n{\"tenant\":\"t\"}\n";
        let w = parse_workload(
            Path::new("w.jsonl"),
            text,
            &Catalog::builtin(),
            BadRows::Skip,
        )
        .unwrap();
        assert_eq!(w.jobs.len(), 1);
        assert_eq!(w.skipped.rows, 2);
        assert!(w.skipped.first[0].starts_with("w.jsonl:2:"));
    }

    #[test]
    fn cluster_errors_name_the_line_of_the_field() {
        let cat = Catalog::builtin();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/cluster.toml"
        ))
        .unwrap();
        parse_cluster(Path::new("c.toml"), &text, &cat).unwrap();
        let bad = text.replacen("accelerator = \"H200\"", "accelerator = \"H999\"", 1);
        let e = parse_cluster(Path::new("c.toml"), &bad, &cat).unwrap_err();
        let (line, _) = line_col(&bad, bad.find("\"H999\"").unwrap());
        assert!(
            e.to_string()
                .starts_with(&format!("c.toml:{line}:1: node[1].accelerator")),
            "{e}"
        );
        let bad = text.replacen("cpu_cores = 112", "cpu_cores = \"many\"", 1);
        let e = parse_cluster(Path::new("c.toml"), &bad, &cat).unwrap_err();
        let (line, _) = line_col(&bad, bad.find("\"many\"").unwrap());
        assert!(e.to_string().starts_with(&format!("c.toml:{line}:")), "{e}");
        let e = parse_cluster(Path::new("c.toml"), "", &cat).unwrap_err();
        assert!(e.to_string().contains("declares no nodes"), "{e}");
    }
}
