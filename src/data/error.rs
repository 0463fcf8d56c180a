//! What can go wrong while loading a data set or cutting a batch from it.
//!
//! Every variant names the file (or the built-in data set) it is about, so that a message read
//! on its own says where to look. Files that ship inside the binary are named
//! `digits.csv.gz (built in)` and so on.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Whether a shape belongs to the model's input or to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Input,
    Target,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Input => "input",
            Role::Target => "target",
        })
    }
}

/// An error loading data or making a batch; nothing in the data module panics on its input.
#[derive(Debug)]
pub enum DataError {
    /// A file that does not exist.
    MissingFile { path: PathBuf },
    /// A file that exists but cannot be read.
    Io { path: PathBuf, error: io::Error },
    /// A gzip stream that is corrupt or ends early.
    Gzip { file: String, error: io::Error },
    /// A CSV line that is not a row of numbers, has the wrong number of columns, or whose
    /// label is not a class index (`line` counts from 1).
    CsvRow {
        file: String,
        line: usize,
        problem: String,
    },
    /// A CSV file without a single data row.
    CsvEmpty { file: String },
    /// An IDX file whose first four bytes are not an IDX magic number for unsigned bytes.
    IdxMagic { file: String, magic: Vec<u8> },
    /// An IDX file shorter or longer than its header says (both lengths in bytes).
    IdxLength {
        file: String,
        expected: u64,
        found: u64,
    },
    /// IDX files whose dimensions are not those of images and labels, or whose counts differ.
    IdxShape { file: String, problem: String },
    /// Fashion-MNIST is not installed where it was looked for.
    FmnistMissing { path: PathBuf },
    /// An `.npz` file that is not a readable archive of `.npy` arrays, or an array in it of an
    /// element type that cannot be used.
    Npz { path: PathBuf, problem: String },
    /// An `.npz` file without one of the arrays a data set needs.
    NpzMissingArray {
        path: PathBuf,
        array: String,
        found: Vec<String>,
    },
    /// An array in an `.npz` file whose shape does not fit (the expected shape is written with
    /// `n` and `...` where any size is accepted).
    NpzShape {
        path: PathBuf,
        array: String,
        expected: String,
        found: Vec<usize>,
    },
    /// A class label that is negative or at least the number of classes.
    LabelOutOfRange {
        file: String,
        label: i64,
        classes: usize,
    },
    /// A text that cannot be cut into examples (too short for the window, too many symbols).
    Text { dataset: String, problem: String },
    /// A data spec that names no data set or has bad arguments.
    Spec { spec: String, problem: String },
    /// A model input or target shape that does not fit the data set's examples.
    ShapeMismatch {
        dataset: String,
        role: Role,
        declared: Vec<usize>,
        fits: String,
    },
    /// A shape whose batch axis (axis 0) differs from the number of examples asked for.
    BatchSize {
        dataset: String,
        role: Role,
        declared: Vec<usize>,
        examples: usize,
    },
    /// A NaN or an infinity in a data set's numbers (`example` counts from 0 along the first
    /// axis; `element` is the position within that example).
    NonFinite {
        file: String,
        array: String,
        example: usize,
        element: usize,
        value: f32,
    },
    /// A model whose inputs and targets the data set cannot feed: several of them from a data
    /// set of one input and one target, or one that no named array is for.
    Leaves { dataset: String, problem: String },
    /// An example index past the end of a split.
    IndexOutOfRange {
        dataset: String,
        index: usize,
        len: usize,
    },
}

/// Writes a shape as `[a, b, c]`.
pub(crate) fn shape_text(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::MissingFile { path } => {
                write!(f, "{}: no such file", path.display())
            }
            DataError::Io { path, error } => {
                write!(f, "{}: cannot be read: {error}", path.display())
            }
            DataError::Gzip { file, error } => {
                write!(f, "{file}: corrupt or truncated gzip data: {error}")
            }
            DataError::CsvRow {
                file,
                line,
                problem,
            } => write!(f, "{file}:{line}: {problem}"),
            DataError::CsvEmpty { file } => write!(f, "{file}: no data rows"),
            DataError::NonFinite {
                file,
                array,
                example,
                element,
                value,
            } => write!(
                f,
                "{file}: `{array}` holds {value} at example {example} (element {element} of it); \
                 data must be finite numbers — fix the file, or pass --allow-nonfinite to use it \
                 anyway"
            ),
            DataError::IdxMagic { file, magic } => {
                let hex: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "{file}: bad IDX magic number {}; expected 00 00 08 followed by the number \
                     of dimensions (an IDX file of unsigned bytes)",
                    hex.join(" ")
                )
            }
            DataError::IdxLength {
                file,
                expected,
                found,
            } => {
                let what = if found < expected {
                    "truncated"
                } else {
                    "has trailing bytes"
                };
                write!(
                    f,
                    "{file}: IDX file {what}: its header needs {expected} bytes, the file has {found}"
                )
            }
            DataError::IdxShape { file, problem } => write!(f, "{file}: {problem}"),
            DataError::FmnistMissing { path } => write!(
                f,
                "Fashion-MNIST not found: {} does not exist; install it with \
                 `apt-get install dataset-fashion-mnist` (or pass a data dir)",
                path.display()
            ),
            DataError::Npz { path, problem } => write!(f, "{}: {problem}", path.display()),
            DataError::NpzMissingArray { path, array, found } => write!(
                f,
                "{}: no array named `{array}` (the file has: {}); a data set needs \
                 x_train, y_train, x_test and y_test",
                path.display(),
                if found.is_empty() {
                    "no arrays".to_string()
                } else {
                    found.join(", ")
                }
            ),
            DataError::NpzShape {
                path,
                array,
                expected,
                found,
            } => write!(
                f,
                "{}: array `{array}` has shape {}, expected {expected}",
                path.display(),
                shape_text(found)
            ),
            DataError::LabelOutOfRange {
                file,
                label,
                classes,
            } => write!(
                f,
                "{file}: label {label} is out of range: labels must lie in 0..{classes}"
            ),
            DataError::Text { dataset, problem } => write!(f, "{dataset}: {problem}"),
            DataError::Spec { spec, problem } => write!(f, "data `{spec}`: {problem}"),
            DataError::ShapeMismatch {
                dataset,
                role,
                declared,
                fits,
            } => write!(
                f,
                "{dataset}: the model's {role} shape {} does not fit the data, whose {role}s \
                 are {fits}",
                shape_text(declared)
            ),
            DataError::BatchSize {
                dataset,
                role,
                declared,
                examples,
            } => write!(
                f,
                "{dataset}: the model's {role} shape {} has batch axis {}, but the batch \
                 holds {examples} example{}",
                shape_text(declared),
                declared.first().copied().unwrap_or(0),
                if *examples == 1 { "" } else { "s" }
            ),
            DataError::Leaves { dataset, problem } => write!(f, "{dataset}: {problem}"),
            DataError::IndexOutOfRange {
                dataset,
                index,
                len,
            } => write!(
                f,
                "{dataset}: example {index} is out of range: the split has {len} examples"
            ),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { error, .. } | DataError::Gzip { error, .. } => Some(error),
            _ => None,
        }
    }
}
