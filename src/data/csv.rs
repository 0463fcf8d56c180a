//! CSV tables: numeric features, then a class label in the last column.
//!
//! The format is deliberately plain: comma-separated numbers, one example a line, no quoting.
//! Blank lines are skipped, and a first line in which no field is a number is taken as a header
//! and skipped too. Anything else that is not a number is an error naming its line, as is a row
//! whose column count differs from the first row's, and a label that is not a non-negative
//! integer (`3` and `3.0` are both class 3).

use super::error::DataError;

/// The rows of a CSV table: `width` features per row, then one label.
#[derive(Debug)]
pub(crate) struct Table {
    pub features: Vec<f32>,
    pub width: usize,
    pub labels: Vec<u32>,
}

/// Parses CSV text (already decompressed); `file` names it in errors.
pub(crate) fn parse(bytes: &[u8], file: &str) -> Result<Table, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::CsvRow {
        file: file.to_string(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        problem: "not UTF-8 text".to_string(),
    })?;
    let row_error = |line: usize, problem: String| DataError::CsvRow {
        file: file.to_string(),
        line,
        problem,
    };
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut columns = None;
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if number == 1 && fields.iter().all(|f| f.parse::<f64>().is_err()) {
            continue;
        }
        let expected = *columns.get_or_insert(fields.len());
        if fields.len() != expected {
            return Err(row_error(
                number,
                format!("{} columns, but the first row has {expected}", fields.len()),
            ));
        }
        let Some((label, values)) = fields.split_last() else {
            continue;
        };
        if values.is_empty() {
            return Err(row_error(
                number,
                "a single column: a row needs at least one feature before the label".to_string(),
            ));
        }
        for (column, field) in values.iter().enumerate() {
            let value = field.parse::<f32>().ok().filter(|v| v.is_finite());
            let Some(value) = value else {
                return Err(row_error(
                    number,
                    format!("column {}: `{field}` is not a number", column + 1),
                ));
            };
            features.push(value);
        }
        labels.push(parse_label(label).ok_or_else(|| {
            row_error(
                number,
                format!("label `{label}` is not a class index (a non-negative integer)"),
            )
        })?);
    }
    match columns {
        Some(columns) if !labels.is_empty() => Ok(Table {
            features,
            width: columns - 1,
            labels,
        }),
        _ => Err(DataError::CsvEmpty {
            file: file.to_string(),
        }),
    }
}

/// A class index written as an integer, possibly with a zero fraction (`7`, `7.0`).
fn parse_label(field: &str) -> Option<u32> {
    if let Ok(label) = field.parse::<u32>() {
        return Some(label);
    }
    let value = field.parse::<f64>().ok()?;
    let integral = value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value);
    integral.then_some(value as u32)
}
