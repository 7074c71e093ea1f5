//! Batch scripts: `gosok submit train.sh` reads `#GOSOK` directives (and the common
//! `#SBATCH` ones) from the script's leading comment block, as Slurm users write them, and
//! runs the script itself as the job's command.
//!
//! The directive block is the comments after the `#!` line, up to the first line that is
//! neither blank nor a comment. A directive gosok has no meaning for is reported, never
//! silently dropped; a malformed one is an error naming its line.

use serde_json::{Value, json};

/// What a script's directives ask for, as the submission's JSON fields and job control.
#[derive(Debug, Default, PartialEq)]
pub struct Directives {
    pub name: Option<String>,
    pub replicas: Option<u64>,
    /// `--ntasks` and its line: the replicas when `--nodes` is not given.
    pub ntasks: Option<(usize, u64)>,
    /// Whole (or, below 1, a fraction of one) accelerators per replica.
    pub accelerators: Option<f64>,
    pub models: Vec<String>,
    pub limit_s: Option<u64>,
    pub estimate_s: Option<u64>,
    pub priority: Option<String>,
    pub array: Option<String>,
    pub dependency: Option<String>,
    pub hold: bool,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    /// Directives read but with no effect in gosok, with their line numbers.
    pub ignored: Vec<(usize, String)>,
}

/// Whether `text` is a script with directives rather than a JSON, TOML or YAML spec: it
/// starts with `#!` or has a `#GOSOK`/`#SBATCH` line.
pub fn is_script(text: &str) -> bool {
    text.starts_with("#!")
        || text
            .lines()
            .any(|l| l.starts_with("#GOSOK") || l.starts_with("#SBATCH"))
}

/// Reads the directive block of `text`; `path` names the script in errors.
pub fn parse(path: &str, text: &str) -> anyhow::Result<Directives> {
    let mut d = Directives::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end();
        if n == 1 && line.starts_with("#!") {
            continue;
        }
        let t = line.trim_start();
        if t.is_empty() {
            continue;
        }
        if !t.starts_with('#') {
            break; // the first command ends the directive block
        }
        let (kind, rest) = if let Some(r) = t.strip_prefix("#GOSOK") {
            ("#GOSOK", r)
        } else if let Some(r) = t.strip_prefix("#SBATCH") {
            ("#SBATCH", r)
        } else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue; // `#SBATCHX`: not a directive
        }
        for (flag, value) in split_flags(rest)
            .map_err(|e| anyhow::anyhow!("{path}:{n}: {kind} {}: {e}", rest.trim()))?
        {
            apply(&mut d, kind, &flag, value.as_deref(), n)
                .map_err(|e| anyhow::anyhow!("{path}:{n}: {kind} {flag}: {e}"))?;
        }
    }
    match (d.replicas, d.ntasks) {
        (None, Some((_, n))) => d.replicas = Some(n),
        (Some(r), Some((line, n))) if r != n => d.ignored.push((
            line,
            format!("--ntasks={n}: gosok runs one task per replica, --nodes={r} of them"),
        )),
        _ => {}
    }
    Ok(d)
}

/// `--a=1 --b 2 -c 3` → (flag, value) pairs; a flag without a value gets None.
fn split_flags(rest: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if !w.starts_with('-') {
            return Err(format!("{w:?} is not an option (options start with '-')"));
        }
        if let Some((f, v)) = w.split_once('=') {
            out.push((f.to_string(), Some(v.to_string())));
            i += 1;
        } else if i + 1 < words.len() && !words[i + 1].starts_with('-') {
            out.push((w.to_string(), Some(words[i + 1].to_string())));
            i += 2;
        } else {
            out.push((w.to_string(), None));
            i += 1;
        }
    }
    Ok(out)
}

fn need(v: Option<&str>) -> Result<&str, String> {
    v.filter(|v| !v.is_empty())
        .ok_or_else(|| "needs a value".to_string())
}

fn whole(v: Option<&str>) -> Result<u64, String> {
    let v = need(v)?;
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{v:?} is not a positive whole number"))
}

fn apply(
    d: &mut Directives,
    kind: &str,
    flag: &str,
    v: Option<&str>,
    line: usize,
) -> Result<(), String> {
    match flag {
        "-J" | "--job-name" | "--name" => d.name = Some(need(v)?.to_string()),
        // A replica is one task of the gang (torchrun's one per node): Slurm's nodes say
        // how many; tasks do when nodes are not given.
        "-N" | "--nodes" | "--replicas" => d.replicas = Some(whole(v)?),
        "-n" | "--ntasks" => d.ntasks = Some((line, whole(v)?)),
        "-G" | "--gpus-per-node" | "--gpus-per-task" | "--accelerators" => {
            let v = need(v)?;
            // `--gpus-per-node=h100:4` names the model too.
            let (model, count) = match v.split_once(':') {
                Some((m, c)) => (Some(m), c),
                None => (None, v),
            };
            d.accelerators = Some(accel_count(count)?);
            if let Some(m) = model {
                d.models.push(m.to_string());
            }
        }
        "--gres" => {
            // gpu:N or gpu:MODEL:N
            let v = need(v)?;
            let parts: Vec<&str> = v.split(':').collect();
            match parts.as_slice() {
                ["gpu", n] => d.accelerators = Some(accel_count(n)?),
                ["gpu", m, n] => {
                    d.accelerators = Some(accel_count(n)?);
                    d.models.push(m.to_string());
                }
                _ => return Err(format!("{v:?}: gosok reads gpu:N or gpu:MODEL:N")),
            }
        }
        "-C" | "--constraint" | "--model" => d.models.push(need(v)?.to_string()),
        "-t" | "--time" => d.limit_s = Some(parse_time(need(v)?)?),
        "--time-min" | "--estimate" => d.estimate_s = Some(parse_time(need(v)?)?),
        "-a" | "--array" => d.array = Some(need(v)?.to_string()),
        "-d" | "--dependency" => d.dependency = Some(need(v)?.to_string()),
        "-H" | "--hold" => d.hold = true,
        "-D" | "--chdir" | "--workdir" => d.workdir = Some(need(v)?.to_string()),
        "--priority" if kind == "#GOSOK" => d.priority = Some(need(v)?.to_string()),
        "--qos" => d.priority = Some(need(v)?.to_string()),
        "--env" if kind == "#GOSOK" => {
            let v = need(v)?;
            match v.split_once('=') {
                Some((k, val)) if !k.is_empty() => d.env.push((k.to_string(), val.to_string())),
                _ => return Err(format!("{v:?}: expected NAME=VALUE")),
            }
        }
        // Output files: gosok keeps each task's stdout and stderr (`gosok logs`).
        "-o" | "--output" | "-e" | "--error" => d.ignored.push((
            line,
            format!("{flag}: output is kept by gosok, read it with `gosok logs ID`"),
        )),
        other => d
            .ignored
            .push((line, format!("{other}: not used by gosok"))),
    }
    Ok(())
}

fn accel_count(v: &str) -> Result<f64, String> {
    let n: f64 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a number of accelerators"))?;
    check_accelerators(n)
}

/// Whole accelerators, or a fraction of one shareable device below 1.
pub fn check_accelerators(n: f64) -> Result<f64, String> {
    let fraction = n > 0.0 && n < 1.0;
    let whole = n >= 1.0 && n.fract() == 0.0 && n <= 4096.0;
    if fraction || whole {
        Ok(n)
    } else {
        Err(format!(
            "{n}: whole accelerators, or a fraction of one shareable device below 1 (0.5)"
        ))
    }
}

/// Slurm's time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`; also `90s`,
/// `30m`, `2h`, `1d`.
pub fn parse_time(v: &str) -> Result<u64, String> {
    let bad = || format!("{v:?} is not a time (minutes, M:S, H:M:S, D-H:M:S, or 90s/30m/2h/1d)");
    if let Some(unit) = v.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: u64 = v[..v.len() - 1].parse().map_err(|_| bad())?;
        let mul = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Ok(n * mul);
    }
    let (days, rest) = match v.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().map_err(|_| bad())?, r),
        None => (0, v),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let s = match (v.contains('-'), parts.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (false, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        (true, [h, m, s]) => h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    let total = days * 86_400 + s;
    if total == 0 {
        return Err(format!("{v:?}: a time limit must be above zero"));
    }
    Ok(total)
}

impl Directives {
    /// The job group the directives describe (replicas × accelerators of models).
    pub fn group(&self) -> Value {
        let mut g = json!({"replicas": self.replicas.unwrap_or(1)});
        if let Some(a) = self.accelerators {
            set_accelerators(&mut g, a);
        }
        if !self.models.is_empty() {
            g["models"] = json!(self.models);
        }
        g
    }
}

/// `accelerators` for whole ones, `accelerator_milli` for a fraction of one.
pub fn set_accelerators(group: &mut Value, n: f64) {
    let Some(g) = group.as_object_mut() else {
        return;
    };
    if n < 1.0 {
        g.remove("accelerators");
        g.insert(
            "accelerator_milli".into(),
            json!((n * 1000.0).round() as u64),
        );
    } else {
        g.remove("accelerator_milli");
        g.insert("accelerators".into(), json!(n as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_of_both_kinds_are_read_and_unknown_ones_reported() {
        let script = "#!/bin/bash\n#SBATCH --job-name=sweep\n#SBATCH -N 2\n#SBATCH --gres=gpu:h100:4\n#SBATCH --time=1:30:00\n\n# a comment\n#SBATCH --array=0-9%2\n#SBATCH --output=out.txt\n#SBATCH --mail-type=END\n#GOSOK --priority high --env SEED=7\n#SBATCH --dependency=afterok:3\necho hi\n#SBATCH --nodes=9\n";
        let d = parse("job.sh", script).unwrap();
        assert_eq!(d.name.as_deref(), Some("sweep"));
        assert_eq!(
            d.replicas,
            Some(2),
            "the directive after the first command is not read"
        );
        assert_eq!(d.accelerators, Some(4.0));
        assert_eq!(d.models, ["h100"]);
        assert_eq!(d.limit_s, Some(5400));
        assert_eq!(d.array.as_deref(), Some("0-9%2"));
        assert_eq!(d.dependency.as_deref(), Some("afterok:3"));
        assert_eq!(d.priority.as_deref(), Some("high"));
        assert_eq!(d.env, [("SEED".to_string(), "7".to_string())]);
        let lines: Vec<usize> = d.ignored.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [9, 10]);
    }

    #[test]
    fn a_bad_directive_names_its_line() {
        let e = parse(
            "a.sh",
            "#!/bin/sh\n#SBATCH --nodes=2\n#SBATCH --time=soon\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("a.sh:3: #SBATCH --time"), "{e}");
        let e = parse("a.sh", "#GOSOK --gres=tpu:4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.sh:1") && e.contains("gpu:N"), "{e}");
        let e = parse("a.sh", "#GOSOK --accelerators 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fraction"), "{e}");
    }

    #[test]
    fn slurm_times_read_as_slurm_means_them() {
        assert_eq!(parse_time("30").unwrap(), 1800);
        assert_eq!(parse_time("2:30").unwrap(), 150);
        assert_eq!(parse_time("1:00:00").unwrap(), 3600);
        assert_eq!(parse_time("1-2").unwrap(), 93_600);
        assert_eq!(parse_time("1-0:0:10").unwrap(), 86_410);
        assert_eq!(parse_time("90s").unwrap(), 90);
        assert_eq!(parse_time("2h").unwrap(), 7200);
        assert!(parse_time("0").is_err());
        assert!(parse_time("x:1").is_err());
    }
}
