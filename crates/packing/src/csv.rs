//! Reading CSV files with errors that name the file, the line, the column and the problem.
//!
//! The trace importers all read comma-separated tables with a header line. This module parses
//! RFC 4180 CSV (quoted fields, doubled quotes inside quotes, `\n` or `\r\n` line ends) into a
//! [`CsvTable`] that remembers where every field started, so that a caller that finds a bad value
//! can say exactly where it is: `pods.csv:17:23: column `gpu_milli`: "abc" is not a number`.
//!
//! Columns are found by header name, never by position, so files that carry extra columns or
//! put them in another order read the same.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file something is: 1-based line and 1-based column (in characters).
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

/// A problem with an input file.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file could not be read at all.
    #[error("{}: cannot read the file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something at a known place in the file is wrong.
    #[error("{location}: {problem}")]
    At { location: Location, problem: String },
}

impl CsvError {
    /// Where the problem is, when it is at a place in the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            CsvError::Io { .. } => None,
            CsvError::At { location, .. } => Some(location),
        }
    }

    pub(crate) fn at(path: &Path, line: usize, column: usize, problem: impl Into<String>) -> Self {
        CsvError::At {
            location: Location {
                path: path.to_path_buf(),
                line,
                column,
            },
            problem: problem.into(),
        }
    }
}

/// One data row: its fields and where each of them starts.
#[derive(Debug, Clone)]
pub struct CsvRow {
    line: usize,
    fields: Vec<String>,
    columns: Vec<usize>,
}

impl CsvRow {
    /// The 1-based line the row starts on.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The text of field `index` (0-based, as returned by [`CsvTable::column`]).
    pub fn field(&self, index: usize) -> &str {
        self.fields.get(index).map(String::as_str).unwrap_or("")
    }

    /// The 1-based character column where field `index` starts.
    pub fn column_of(&self, index: usize) -> usize {
        self.columns.get(index).copied().unwrap_or(1)
    }
}

/// A parsed CSV file: a header and data rows that all have as many fields as the header.
#[derive(Debug, Clone)]
pub struct CsvTable {
    path: PathBuf,
    header: Vec<String>,
    header_columns: Vec<usize>,
    by_name: HashMap<String, usize>,
    rows: Vec<CsvRow>,
}

impl CsvTable {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<CsvTable, CsvError> {
        let bytes = std::fs::read(path).map_err(|source| CsvError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let prefix = &e.as_bytes()[..valid];
                // The prefix is valid UTF-8 by construction, so this cannot fail; an empty
                // prefix only moves the reported place to 1:1.
                let prefix = std::str::from_utf8(prefix).unwrap_or("");
                let line = prefix.matches('\n').count() + 1;
                let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                return Err(CsvError::at(
                    path,
                    line,
                    column,
                    "the file is not UTF-8 text (save it as UTF-8 CSV)",
                ));
            }
        };
        CsvTable::parse(path, &text)
    }

    /// Parses `text`; `path` is used only in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<CsvTable, CsvError> {
        let mut records = parse_records(path, text)?.into_iter();
        let Some(header) = records.next() else {
            return Err(CsvError::at(
                path,
                1,
                1,
                "the file is empty: expected a header line naming the columns",
            ));
        };
        let mut by_name = HashMap::new();
        for (i, name) in header.fields.iter().enumerate() {
            let name = name.trim();
            if name.is_empty() {
                return Err(CsvError::at(
                    path,
                    header.line,
                    header.columns[i],
                    format!("header field {} is empty: every column needs a name", i + 1),
                ));
            }
            if by_name.insert(name.to_string(), i).is_some() {
                return Err(CsvError::at(
                    path,
                    header.line,
                    header.columns[i],
                    format!("column `{name}` appears twice in the header"),
                ));
            }
        }
        let width = header.fields.len();
        let mut rows = Vec::new();
        for record in records {
            if record.fields.len() != width {
                let column = if record.fields.len() > width {
                    record.columns[width]
                } else {
                    record.end_column
                };
                return Err(CsvError::at(
                    path,
                    record.line,
                    column,
                    format!(
                        "this row has {} fields but the header has {width} ({})",
                        record.fields.len(),
                        header.fields.join(",")
                    ),
                ));
            }
            rows.push(CsvRow {
                line: record.line,
                fields: record.fields,
                columns: record.columns,
            });
        }
        Ok(CsvTable {
            path: path.to_path_buf(),
            header: header.fields.iter().map(|f| f.trim().to_string()).collect(),
            header_columns: header.columns,
            by_name,
            rows,
        })
    }

    /// The file this table came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The column names, in file order.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The data rows (the header is not one of them).
    pub fn rows(&self) -> &[CsvRow] {
        &self.rows
    }

    /// The index of column `name`, or an error at the header naming the columns that exist.
    pub fn column(&self, name: &str) -> Result<usize, CsvError> {
        self.optional_column(name).ok_or_else(|| {
            CsvError::at(
                &self.path,
                1,
                self.header_columns.last().copied().unwrap_or(1),
                format!(
                    "missing column `{name}`: the header has {}",
                    self.header.join(",")
                ),
            )
        })
    }

    /// The index of column `name`, if the header has it.
    pub fn optional_column(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// An error about field `column` of `row`.
    pub fn error(&self, row: &CsvRow, column: usize, problem: impl Into<String>) -> CsvError {
        let name = self.header.get(column).map(String::as_str).unwrap_or("?");
        CsvError::at(
            &self.path,
            row.line,
            row.column_of(column),
            format!("column `{name}`: {}", problem.into()),
        )
    }

    /// Field `column` of `row` as a non-negative integer no larger than `max`.
    pub fn parse_u64(&self, row: &CsvRow, column: usize, max: u64) -> Result<u64, CsvError> {
        let text = row.field(column).trim();
        if text.is_empty() {
            return Err(self.error(row, column, "is empty; expected a non-negative integer"));
        }
        if text.starts_with('-') {
            return Err(self.error(
                row,
                column,
                format!("{text:?} is negative; expected a non-negative integer"),
            ));
        }
        // Some exporters write integral values as "12.0"; accept those, refuse "12.5".
        let value = match text.parse::<u64>() {
            Ok(v) => v,
            Err(_) => match text.parse::<f64>() {
                Ok(v) if v.is_finite() && v.fract() == 0.0 && v >= 0.0 && v <= u64::MAX as f64 => {
                    v as u64
                }
                Ok(v) if v.is_finite() => {
                    return Err(self.error(
                        row,
                        column,
                        format!("{text:?} is not a whole number; expected a non-negative integer"),
                    ));
                }
                _ => {
                    return Err(self.error(
                        row,
                        column,
                        format!("{text:?} is not a number; expected a non-negative integer"),
                    ));
                }
            },
        };
        if value > max {
            return Err(self.error(row, column, format!("{value} is too large (at most {max})")));
        }
        Ok(value)
    }

    /// Field `column` of `row` as a finite number.
    pub fn parse_f64(&self, row: &CsvRow, column: usize) -> Result<f64, CsvError> {
        let text = row.field(column).trim();
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.error(row, column, format!("{text:?} is not a finite number"))),
        }
    }
}

struct Record {
    line: usize,
    fields: Vec<String>,
    columns: Vec<usize>,
    end_column: usize,
}

/// Splits `text` into records. Blank lines between records are not records.
fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    let mut column = 1usize;
    while chars.peek().is_some() {
        let start_line = line;
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        let mut field = String::new();
        let mut field_column = column;
        let mut in_quotes = false;
        let mut quoted_field = false;
        let mut quote_line = line;
        let mut quote_column = column;
        let end_column;
        loop {
            let Some(c) = chars.next() else {
                if in_quotes {
                    return Err(CsvError::at(
                        path,
                        quote_line,
                        quote_column,
                        "this quoted field is never closed (a `\"` is missing)",
                    ));
                }
                end_column = column;
                fields.push(std::mem::take(&mut field));
                columns.push(field_column);
                break;
            };
            if in_quotes {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        column += 2;
                        field.push('"');
                    }
                    '"' => {
                        in_quotes = false;
                        column += 1;
                    }
                    '\n' => {
                        field.push('\n');
                        line += 1;
                        column = 1;
                    }
                    _ => {
                        field.push(c);
                        column += 1;
                    }
                }
                continue;
            }
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    columns.push(field_column);
                    column += 1;
                    field_column = column;
                    quoted_field = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {
                    column += 1;
                }
                '\n' => {
                    end_column = column;
                    fields.push(std::mem::take(&mut field));
                    columns.push(field_column);
                    line += 1;
                    column = 1;
                    break;
                }
                '"' if field.is_empty() && !quoted_field => {
                    in_quotes = true;
                    quoted_field = true;
                    quote_line = line;
                    quote_column = column;
                    column += 1;
                }
                '"' => {
                    return Err(CsvError::at(
                        path,
                        line,
                        column,
                        "a `\"` inside an unquoted field (quote the whole field and double the quote)",
                    ));
                }
                _ => {
                    if quoted_field {
                        return Err(CsvError::at(
                            path,
                            line,
                            column,
                            "text after the closing `\"` of a quoted field",
                        ));
                    }
                    field.push(c);
                    column += 1;
                }
            }
        }
        let blank = fields.len() == 1 && fields[0].trim().is_empty() && !quoted_field;
        if !blank {
            records.push(Record {
                line: start_line,
                fields,
                columns,
                end_column,
            });
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CsvTable, CsvError> {
        CsvTable::parse(Path::new("t.csv"), text)
    }

    #[test]
    fn reads_header_rows_and_columns_by_name() {
        let t = parse("a,b,c\n1,2,3\r\n4,,6\n").unwrap();
        assert_eq!(t.header(), ["a", "b", "c"]);
        assert_eq!(t.rows().len(), 2);
        let c = t.column("c").unwrap();
        assert_eq!(t.rows()[1].field(c), "6");
        assert_eq!(t.rows()[1].line(), 3);
        assert_eq!(t.rows()[1].column_of(c), 4);
        assert_eq!(t.rows()[1].field(t.column("b").unwrap()), "");
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_newlines() {
        let t = parse("name,x\n\"a,b\",\"say \"\"hi\"\"\"\n\"two\nlines\",1\nz,2\n").unwrap();
        assert_eq!(t.rows()[0].field(0), "a,b");
        assert_eq!(t.rows()[0].field(1), "say \"hi\"");
        assert_eq!(t.rows()[1].field(0), "two\nlines");
        assert_eq!(t.rows()[2].line(), 5);
    }

    #[test]
    fn blank_lines_and_missing_final_newline_are_fine() {
        let t = parse("a,b\n\n1,2\n\n3,4").unwrap();
        assert_eq!(t.rows().len(), 2);
        assert_eq!(t.rows()[1].line(), 5);
    }

    #[test]
    fn empty_file_is_an_error_at_line_one() {
        let e = parse("").unwrap_err();
        assert_eq!(e.location().unwrap().line, 1);
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn wrong_field_count_names_line_and_column() {
        let e = parse("a,b,c\n1,2,3\n4,5\n").unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!((loc.line, loc.column), (3, 4));
        assert!(
            e.to_string()
                .starts_with("t.csv:3:4: this row has 2 fields"),
            "{e}"
        );
        let e = parse("a,b\n1,2,3\n").unwrap_err();
        assert_eq!(e.location().unwrap().column, 5);
    }

    #[test]
    fn missing_column_names_the_header() {
        let t = parse("a,b\n1,2\n").unwrap();
        let e = t.column("gpu_milli").unwrap_err();
        assert!(e.to_string().contains("missing column `gpu_milli`"), "{e}");
        assert!(e.to_string().contains("a,b"), "{e}");
    }

    #[test]
    fn duplicate_and_empty_header_names_are_errors() {
        assert!(
            parse("a,a\n1,2\n")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            parse("a,,b\n1,2,3\n")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn unterminated_quote_points_at_the_quote() {
        let e = parse("a,b\n1,\"oops\n").unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!((loc.line, loc.column), (2, 3));
    }

    #[test]
    fn integers_are_checked_with_place_and_reason() {
        let t = parse("n,m\n-5,1\nabc,2\n7.0,3\n7.5,4\n99,5\n").unwrap();
        let n = t.column("n").unwrap();
        let e = t.parse_u64(&t.rows()[0], n, 100).unwrap_err();
        assert!(e.to_string().starts_with("t.csv:2:1: column `n`:"), "{e}");
        assert!(e.to_string().contains("negative"), "{e}");
        assert!(
            t.parse_u64(&t.rows()[1], n, 100)
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert_eq!(t.parse_u64(&t.rows()[2], n, 100).unwrap(), 7);
        assert!(
            t.parse_u64(&t.rows()[3], n, 100)
                .unwrap_err()
                .to_string()
                .contains("whole")
        );
        assert!(
            t.parse_u64(&t.rows()[4], n, 50)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }

    #[test]
    fn non_utf8_file_is_an_error_with_a_place() {
        let dir = std::env::temp_dir().join(format!("gosok-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.csv");
        std::fs::write(&path, b"a,b\n1,\xff\n").unwrap();
        let e = CsvTable::read(&path).unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!((loc.line, loc.column), (2, 3));
        let missing = CsvTable::read(&dir.join("nope.csv")).unwrap_err();
        assert!(matches!(missing, CsvError::Io { .. }));
        std::fs::remove_dir_all(&dir).ok();
    }
}
