//! Comma-separated tables with a header line, read so that every field remembers where it
//! started: an importer that finds a bad value can say `jobs.csv:17:23: column "duration":
//! "abc" is not a number`.
//!
//! RFC 4180: quoted fields, doubled quotes inside quotes, `\n` or `\r\n` line ends. Columns
//! are found by header name, never by position, so files with extra or reordered columns read
//! the same.

use std::path::{Path, PathBuf};

use crate::error::{InputError, read_text};

/// One field: its text and the 1-based column where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub text: String,
    pub column: usize,
}

/// One data row: its 1-based line and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub fields: Vec<Field>,
    /// The column just past the last field, where a missing field would have been.
    pub end_column: usize,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<Row>,
}

/// A column found by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Col {
    pub index: usize,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table, InputError> {
        let text = read_text(path)?;
        Table::parse(path, &text)
    }

    /// Parses `text` as if it were the file at `path` (the path only names the place in
    /// errors).
    pub fn parse(path: &Path, text: &str) -> Result<Table, InputError> {
        let mut records = parse_records(path, text)?.into_iter();
        let Some(header) = records.next() else {
            return Err(InputError::at(
                path,
                1,
                1,
                "the file is empty; a header line naming the columns is expected",
            ));
        };
        let header: Vec<String> = header
            .fields
            .into_iter()
            .map(|f| f.text.trim().to_string())
            .collect();
        let rows: Vec<Row> = records.collect();
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    /// The column named `name`, or an error that lists the columns there are.
    pub fn column(&self, name: &str) -> Result<Col, InputError> {
        self.find(name).ok_or_else(|| {
            InputError::at(
                &self.path,
                1,
                1,
                format!(
                    "no column {name:?} in the header; the columns are: {}",
                    self.header.join(", ")
                ),
            )
        })
    }

    pub fn find(&self, name: &str) -> Option<Col> {
        self.header
            .iter()
            .position(|h| h == name)
            .map(|index| Col { index })
    }

    /// The field of `row` in column `col`, or an error at the end of a short row.
    pub fn field<'a>(&self, row: &'a Row, col: Col) -> Result<&'a Field, InputError> {
        row.fields.get(col.index).ok_or_else(|| {
            InputError::at(
                &self.path,
                row.line,
                row.end_column,
                format!(
                    "column {:?} is missing: the row has {} fields, the header {}",
                    self.header[col.index],
                    row.fields.len(),
                    self.header.len()
                ),
            )
        })
    }

    /// An error about the value in column `col` of `row`.
    pub fn error(&self, row: &Row, col: Col, problem: impl std::fmt::Display) -> InputError {
        let column = row
            .fields
            .get(col.index)
            .map_or(row.end_column, |f| f.column);
        InputError::at(
            &self.path,
            row.line,
            column,
            format!("column {:?}: {problem}", self.header[col.index]),
        )
    }

    /// A non-negative finite number (integer or decimal).
    pub fn number(&self, row: &Row, col: Col) -> Result<f64, InputError> {
        let f = self.field(row, col)?;
        let t = f.text.trim();
        if t.is_empty() {
            return Err(self.error(row, col, "is empty; a number is expected"));
        }
        let v: f64 = t
            .parse()
            .map_err(|_| self.error(row, col, format!("{t:?} is not a number")))?;
        if !v.is_finite() {
            return Err(self.error(row, col, format!("{t:?} is not a finite number")));
        }
        if v < 0.0 {
            return Err(self.error(row, col, format!("{t} is negative")));
        }
        Ok(v)
    }

    /// A whole, non-negative number (`8` or `8.0`).
    pub fn whole(&self, row: &Row, col: Col) -> Result<u64, InputError> {
        let v = self.number(row, col)?;
        if v.fract() != 0.0 || v > 9.0e15 {
            let t = self.field(row, col)?.text.trim().to_string();
            return Err(self.error(row, col, format!("{t:?} is not a whole number")));
        }
        Ok(v as u64)
    }

    pub fn text<'a>(&self, row: &'a Row, col: Col) -> Result<&'a str, InputError> {
        Ok(self.field(row, col)?.text.trim())
    }
}

/// Splits the text into records of fields with their positions. Blank lines are skipped.
fn parse_records(path: &Path, text: &str) -> Result<Vec<Row>, InputError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1usize, 1usize);
    while chars.peek().is_some() {
        let start_line = line;
        let mut fields: Vec<Field> = Vec::new();
        let mut field = String::new();
        let mut field_col = column;
        let mut quoted_open: Option<(usize, usize)> = None;
        let mut was_quoted = false;
        let end_column;
        loop {
            let c = chars.next();
            match (c, quoted_open) {
                (None, Some((l, col))) => {
                    return Err(InputError::at(
                        path,
                        l,
                        col,
                        "a quoted field is never closed (a '\"' is missing)",
                    ));
                }
                (None, None) => {
                    end_column = column;
                    fields.push(Field {
                        text: std::mem::take(&mut field),
                        column: field_col,
                    });
                    break;
                }
                (Some('"'), Some(_)) => {
                    column += 1;
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        column += 1;
                        field.push('"');
                    } else {
                        quoted_open = None;
                    }
                }
                (Some('\n'), Some(_)) => {
                    field.push('\n');
                    line += 1;
                    column = 1;
                }
                (Some(c), Some(_)) => {
                    field.push(c);
                    column += 1;
                }
                (Some('"'), None) if field.trim().is_empty() && !was_quoted => {
                    field.clear();
                    quoted_open = Some((line, column));
                    was_quoted = true;
                    column += 1;
                }
                (Some(','), None) => {
                    fields.push(Field {
                        text: std::mem::take(&mut field),
                        column: field_col,
                    });
                    column += 1;
                    field_col = column;
                    was_quoted = false;
                }
                (Some('\r'), None) if chars.peek() == Some(&'\n') => {
                    column += 1;
                }
                (Some('\n'), None) => {
                    end_column = column;
                    fields.push(Field {
                        text: std::mem::take(&mut field),
                        column: field_col,
                    });
                    line += 1;
                    column = 1;
                    break;
                }
                (Some(c), None) => {
                    field.push(c);
                    column += 1;
                }
            }
        }
        let blank = fields.len() == 1 && fields[0].text.trim().is_empty();
        if !blank {
            rows.push(Row {
                line: start_line,
                fields,
                end_column,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        Table::parse(Path::new("t.csv"), text).unwrap()
    }

    #[test]
    fn fields_keep_their_line_and_column() {
        let t = table("a,b,c\r\n1,22,333\n\n\"x,y\",\"say \"\"hi\"\"\",z\n");
        assert_eq!(t.header, ["a", "b", "c"]);
        assert_eq!(t.rows.len(), 2);
        let r = &t.rows[0];
        assert_eq!(r.line, 2);
        assert_eq!(
            r.fields.iter().map(|f| f.column).collect::<Vec<_>>(),
            [1, 3, 6]
        );
        let r = &t.rows[1];
        assert_eq!(r.line, 4);
        assert_eq!(r.fields[0].text, "x,y");
        assert_eq!(r.fields[1].text, "say \"hi\"");
        assert_eq!(r.fields[2].column, 20);
    }

    #[test]
    fn bad_values_are_reported_where_they_are() {
        let t = table("id,n\n1,abc\n2,-4\n3\n4,2.5\n");
        let n = t.column("n").unwrap();
        let e = |i: usize| t.whole(&t.rows[i], n).unwrap_err().to_string();
        assert_eq!(e(0), "t.csv:2:3: column \"n\": \"abc\" is not a number");
        assert_eq!(e(1), "t.csv:3:3: column \"n\": -4 is negative");
        assert_eq!(
            e(2),
            "t.csv:4:2: column \"n\" is missing: the row has 1 fields, the header 2"
        );
        assert_eq!(
            e(3),
            "t.csv:5:3: column \"n\": \"2.5\" is not a whole number"
        );
        let e = t.column("gpus").unwrap_err().to_string();
        assert_eq!(
            e,
            "t.csv:1:1: no column \"gpus\" in the header; the columns are: id, n"
        );
    }

    #[test]
    fn an_empty_file_or_open_quote_is_an_error() {
        let e = Table::parse(Path::new("e.csv"), "").unwrap_err();
        assert!(
            e.to_string().starts_with("e.csv:1:1: the file is empty"),
            "{e}"
        );
        let e = Table::parse(Path::new("q.csv"), "a,b\n1,\"open\n").unwrap_err();
        assert!(
            e.to_string().starts_with("q.csv:2:3: a quoted field"),
            "{e}"
        );
    }
}
