//! Input errors that say where the problem is: file, line, column, and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in an input file: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// A problem with an input file (trace, workload, cluster).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read at all.
    // The reason is in the message, not in `source()`, so that a chain printer (anyhow's
    // `{:#}`) says it once.
    #[error("{}: cannot read the file: {reason}", path.display())]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// Something at a known place in the file is wrong.
    #[error("{location}: {problem}")]
    At { location: Location, problem: String },
}

impl InputError {
    pub fn at(path: &Path, line: usize, column: usize, problem: impl Into<String>) -> InputError {
        InputError::At {
            location: Location {
                path: path.to_path_buf(),
                line,
                column,
            },
            problem: problem.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> InputError {
        InputError::Io {
            path: path.to_path_buf(),
            reason: source,
        }
    }

    /// Where the problem is, when it is at a place in the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            InputError::Io { .. } => None,
            InputError::At { location, .. } => Some(location),
        }
    }
}

/// What to do with a row that does not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRows {
    /// Stop at the first bad row with its error (the default: nothing is dropped silently).
    #[default]
    Fail,
    /// Leave bad rows out and count them (`--skip-bad-rows`).
    Skip,
}

/// Rows left out under [`BadRows::Skip`]: how many, and the first few reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub rows: u64,
    /// The first [`Skipped::KEEP`] errors, as the user would have seen them.
    pub first: Vec<String>,
}

impl Skipped {
    pub const KEEP: usize = 10;

    /// Under `Fail` returns the error; under `Skip` counts it.
    pub fn handle(&mut self, policy: BadRows, e: InputError) -> Result<(), InputError> {
        match policy {
            BadRows::Fail => Err(e),
            BadRows::Skip => {
                self.rows += 1;
                if self.first.len() < Self::KEEP {
                    self.first.push(e.to_string());
                }
                Ok(())
            }
        }
    }

    pub fn merge(&mut self, other: &Skipped) {
        self.rows += other.rows;
        for e in &other.first {
            if self.first.len() < Self::KEEP {
                self.first.push(e.clone());
            }
        }
    }
}

/// Reads a whole file as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String, InputError> {
    let bytes = std::fs::read(path).map_err(|e| InputError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Report where the first invalid byte is, so the user can find it.
        let text = String::from_utf8_lossy(valid);
        let line = text.matches('\n').count() + 1;
        let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        InputError::at(path, line, column, "the file is not UTF-8 text")
    })
}

/// The 1-based (line, column) of a key in a TOML file, for errors that come as a field path
/// (`node[3].accelerator`) rather than a position: the `[[node]]` table is found by count and
/// the key within it. Falls back to the table's header, then to the start of the file.
pub fn locate_toml_field(text: &str, field: &str) -> (usize, usize) {
    let mut parts = field.split('.');
    let Some(first) = parts.next() else {
        return (1, 1);
    };
    let (table, index) = match first.split_once('[') {
        Some((t, rest)) => (t, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let key = parts.next().map(|k| k.split('[').next().unwrap_or(k));
    let header = format!("[[{table}]]");
    let lines: Vec<&str> = text.lines().collect();
    let mut seen = 0usize;
    let mut start = None;
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == header {
            if Some(seen) == index || index.is_none() {
                start = Some(i);
                break;
            }
            seen += 1;
        }
    }
    let Some(start) = start else {
        return (1, 1);
    };
    if let Some(key) = key {
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if let Some(rest) = t.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return (i + 1, l.len() - t.len() + 1);
            }
        }
    }
    (start + 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_field_path_is_found_by_table_count_and_key() {
        let text = "[[site]]\nname = 'a'\n\n[[node]]\nname = 'x'\n\n[[node]]\nname = 'y'\n  accelerator = 'H9'\n";
        assert_eq!(locate_toml_field(text, "node[1].accelerator"), (9, 3));
        assert_eq!(locate_toml_field(text, "node[0].name"), (5, 1));
        assert_eq!(locate_toml_field(text, "node[1].count"), (7, 1));
        assert_eq!(locate_toml_field(text, "rack[0].name"), (1, 1));
        assert_eq!(locate_toml_field(text, "cluster"), (1, 1));
    }

    #[test]
    fn skipping_counts_and_keeps_the_first_reasons() {
        let mut s = Skipped::default();
        for i in 0..15 {
            s.handle(
                BadRows::Skip,
                InputError::at(Path::new("f.csv"), i, 1, "bad"),
            )
            .unwrap();
        }
        assert_eq!(s.rows, 15);
        assert_eq!(s.first.len(), Skipped::KEEP);
        assert_eq!(s.first[2], "f.csv:2:1: bad");
        let e = s
            .handle(
                BadRows::Fail,
                InputError::at(Path::new("f.csv"), 3, 4, "worse"),
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "f.csv:3:4: worse");
    }
}
