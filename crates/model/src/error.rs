//! The one error type of the model: what is wrong, and where.

use std::fmt;

/// A spec, catalog or cluster file that cannot be accepted.
///
/// `field` is a path in the input (`groups[0].replicas`, `rack[3].power_cap_kw`) so that a
/// user can find the value to fix; `message` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Names (of sites, racks, nodes, tenants, models) are identifiers users type and other tools
/// parse, so they are kept to a safe alphabet.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if name.len() > 128 {
        return Err(SpecError::new(
            field,
            format!("is {} characters long; at most 128 are allowed", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(SpecError::new(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, '-', '_' and '.' only"),
        ));
    }
    Ok(())
}

/// A label key: a name, optionally behind one prefix and a slash (`gosok.io/virtual`), so that
/// tools can keep their labels apart.
pub fn check_label_key(field: &str, key: &str) -> Result<(), SpecError> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            check_name(field, prefix)?;
            check_name(field, name)
        }
        None => check_name(field, key),
    }
}

/// A label value (or taint value): printable ASCII without spaces, `=` or `,`, at most 256
/// bytes, so that `key=value` reads back unambiguously.
pub fn check_label_value(field: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > 256 {
        return Err(SpecError::new(
            field,
            format!(
                "value is {} bytes long; at most 256 are allowed",
                value.len()
            ),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '=' | ','))
    {
        return Err(SpecError::new(
            field,
            format!(
                "value {value:?} contains {c:?}; use printable characters other than '=' and ','"
            ),
        ));
    }
    Ok(())
}

/// A finite, non-negative number within `max`.
pub fn check_f64(field: &str, value: f64, min_exclusive: f64, max: f64) -> Result<(), SpecError> {
    if !value.is_finite() {
        return Err(SpecError::new(field, "must be a finite number"));
    }
    if value <= min_exclusive {
        return Err(SpecError::new(
            field,
            format!("is {value}; it must be greater than {min_exclusive}"),
        ));
    }
    if value > max {
        return Err(SpecError::new(
            field,
            format!("is {value}; at most {max} is allowed"),
        ));
    }
    Ok(())
}

/// An integer within `min..=max`.
pub fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), SpecError> {
    if value < min {
        return Err(SpecError::new(
            field,
            format!("is {value}; it must be at least {min}"),
        ));
    }
    if value > max {
        return Err(SpecError::new(
            field,
            format!("is {value}; at most {max} is allowed"),
        ));
    }
    Ok(())
}
