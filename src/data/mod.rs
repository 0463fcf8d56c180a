//! Data sets for training: loading them, splitting them, and cutting batches.
//!
//! A [`DataSpec`] names a data set; [`load`] turns it into a [`Dataset`] of a train and a test
//! [`Split`]; [`Split::batch`] gives the `f32` inputs and targets of chosen examples, shaped as
//! the model declares them; [`epoch_order`] gives each epoch's seeded shuffle. The data sets:
//!
//! | spec | examples | where it comes from |
//! | --- | --- | --- |
//! | `digits` (default) | 1797 digits, 8×8, 10 classes; 80/20 split | built in (`data/digits.csv.gz`) |
//! | `mnist5k` | 5000 MNIST digits, 28×28, 10 classes; 80/20 split | built in (`data/mnist_5k.csv.gz`) |
//! | `fmnist` | Fashion-MNIST, 60000 + 10000, 28×28, 10 classes | the Debian package `dataset-fashion-mnist`, or `dir` |
//! | `shakespeare(seq = N)` | windows of N characters, next-character targets; last 10% is test | built in (`data/shakespeare.txt`) |
//! | `text("file", seq = N)` | the same over a UTF-8 text file (vocabulary: its characters) | the user's file, optionally gzipped |
//! | `npz("file")` | the arrays `x_train`, `y_train`, `x_test`, `y_test`, or `<name>_train` and `<name>_test` for each input and target (see [`npz`]) | the user's file |
//! | `csv("file")` | numeric features, class label last; seeded stratified split | the user's file, optionally gzipped |
//!
//! Why it is shaped this way:
//!
//! - **Nothing to download for the defaults.** The three small sets are compiled into the
//!   binary with `include_bytes!` (about 2 MB), so `digits` works anywhere; their sources and
//!   licences are in `data/README.md`. The one large set comes from a system package.
//! - **Compact in memory.** Pixels stay bytes and text stays token ids until a batch is made;
//!   only the batch is `f32`. Fashion-MNIST's 60000 training images are 47 MB as bytes and
//!   would be 188 MB as floats.
//! - **The model's shapes decide the layout.** The data set does not impose `[B, 64]` or
//!   `[B, 8, 8]`; any shape holding an example's values fits (see [`split`]).
//! - **Deterministic.** Splits use fixed seeds and each epoch's order depends only on
//!   `(seed, epoch)`, so a run can be repeated and resumed exactly.
//! - **Errors, not panics.** Every problem with a file or a shape is a [`DataError`] naming
//!   the file or data set, both shapes of a mismatch, and the line of a bad CSV row.

mod csv;
mod error;
pub mod idx;
pub mod npz;
mod spec;
pub mod split;
mod text;

pub use error::{DataError, Role};
pub use spec::{
    DataSpec, SpecArg, SpecValue, DEFAULT_SEQ, DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION,
};
pub use split::{Leaves, Split};
pub use text::Vocab;

use flate2::read::MultiGzDecoder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use split::{Features, Targets};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

const DIGITS_CSV: &[u8] = include_bytes!("../../data/digits.csv.gz");
const MNIST5K_CSV: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");
const SHAKESPEARE_TXT: &str = include_str!("../../data/shakespeare.txt");

/// The fraction of the built-in image sets held out for testing.
const BUILTIN_TEST_FRACTION: f64 = 0.2;
/// The fraction of the text, at its end, held out for testing.
const TEXT_TEST_FRACTION: f64 = 0.1;

/// A loaded data set: a train and a test split of the same kind of examples.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The data set's name (`digits`) or file.
    pub name: String,
    pub train: Split,
    pub test: Split,
    /// The number of classes, for data sets whose targets are class labels (text: `None`).
    pub classes: Option<usize>,
    /// The character vocabulary, for text.
    pub vocab: Option<Vocab>,
    /// One example's natural feature shape, without the batch axis: `[8, 8]` for the digits,
    /// `[N]` (token ids) for text.
    pub example_shape: Vec<usize>,
}

impl Dataset {
    /// The bytes its train and test splits hold in memory (see [`Split::bytes`]).
    pub fn bytes(&self) -> u64 {
        self.train.bytes() + self.test.bytes()
    }

    /// Maps every input value v to `low + (high − low) v` in both splits (see
    /// [`Split::rescale_inputs`]): the built-in images from [0, 1] to [low, high].
    pub fn rescale_inputs(&mut self, low: f32, high: f32) -> Result<(), DataError> {
        self.train.rescale_inputs(low, high)?;
        self.test.rescale_inputs(low, high)
    }
}

/// The first NaN or infinity in `values`, examples of `width` numbers each: (example, element
/// within it, value).
pub fn first_non_finite(values: &[f32], width: usize) -> Option<(usize, usize, f32)> {
    let at = values.iter().position(|v| !v.is_finite())?;
    let width = width.max(1);
    Some((at / width, at % width, values[at]))
}

/// An error for the first NaN or infinity in `values` (examples of `width` numbers), if any.
pub fn check_finite(
    file: &str,
    array: &str,
    values: &[f32],
    width: usize,
) -> Result<(), DataError> {
    match first_non_finite(values, width) {
        None => Ok(()),
        Some((example, element, value)) => Err(DataError::NonFinite {
            file: file.to_string(),
            array: array.to_string(),
            example,
            element,
            value,
        }),
    }
}

/// Loads the data set a spec names, rejecting NaNs and infinities in its numbers unless
/// `allow_nonfinite`.
pub fn load(spec: &DataSpec, allow_nonfinite: bool) -> Result<Dataset, DataError> {
    match spec {
        DataSpec::Digits => builtin_images("digits", "digits.csv.gz", DIGITS_CSV, [8, 8], 16),
        DataSpec::Mnist5k => {
            builtin_images("mnist5k", "mnist_5k.csv.gz", MNIST5K_CSV, [28, 28], 255)
        }
        DataSpec::Fmnist { dir } => idx::load_fmnist(dir.as_deref()),
        DataSpec::Shakespeare { seq } => text_windows(spec, *seq, SHAKESPEARE_TXT),
        DataSpec::Text { path, seq } => {
            let file = path.display().to_string();
            let bytes = gunzip_if_gzipped(read_file(path)?, &file)?;
            let text = String::from_utf8(bytes).map_err(|e| DataError::Text {
                dataset: spec.to_string(),
                problem: format!(
                    "not UTF-8 text (invalid bytes at byte {})",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            text_windows(spec, *seq, &text)
        }
        DataSpec::Npz(path) => npz::load(path, allow_nonfinite),
        DataSpec::Csv {
            path,
            test_fraction,
            seed,
        } => {
            let file = path.display().to_string();
            let bytes = gunzip_if_gzipped(read_file(path)?, &file)?;
            // The CSV reader rejects non-finite numbers itself, naming their line.
            let table = csv::parse(&bytes, &file)?;
            let classes = class_count(&table.labels);
            let features = Features::Floats(table.features);
            let shape = vec![table.width];
            split_table(
                &file,
                features,
                shape,
                table.labels,
                classes,
                *test_fraction,
                *seed,
            )
        }
    }
}

/// Windows of `seq` characters of `text` (`shakespeare` and `text` specs): the vocabulary is
/// the text's characters, the held-out tail is the test split.
fn text_windows(spec: &DataSpec, seq: usize, text: &str) -> Result<Dataset, DataError> {
    let name: Arc<str> = Arc::from(spec.to_string());
    let splits = text::windows(&name, text, seq, TEXT_TEST_FRACTION)?;
    Ok(Dataset {
        name: name.to_string(),
        train: splits.train,
        test: splits.test,
        classes: None,
        vocab: Some(splits.vocab),
        example_shape: vec![seq],
    })
}

/// The seeded shuffle of `0..len` for one epoch: the same `(seed, epoch)` always gives the
/// same order, and different epochs give independent orders.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// A built-in CSV of pixel images with values in `0..=max`, kept as bytes and scaled to
/// `[0, 1]` in batches.
fn builtin_images<const R: usize>(
    name: &str,
    file: &str,
    gz: &[u8],
    shape: [usize; R],
    max: u8,
) -> Result<Dataset, DataError> {
    let file = format!("{file} (built in)");
    let table = csv::parse(&gunzip_if_gzipped(gz.to_vec(), &file)?, &file)?;
    let width: usize = shape.iter().product();
    if table.width != width {
        return Err(DataError::CsvRow {
            file,
            line: 1,
            problem: format!("{} features per row, expected {width}", table.width),
        });
    }
    let mut pixels = Vec::with_capacity(table.features.len());
    for (i, &v) in table.features.iter().enumerate() {
        if v.fract() != 0.0 || !(0.0..=f32::from(max)).contains(&v) {
            return Err(DataError::CsvRow {
                file,
                line: i / width + 1,
                problem: format!("pixel {v} is not an integer in 0..={max}"),
            });
        }
        pixels.push(v as u8);
    }
    let features = Features::Bytes {
        data: pixels,
        divisor: f32::from(max),
        offset: 0.0,
    };
    let classes = class_count(&table.labels);
    split_table(
        name,
        features,
        shape.to_vec(),
        table.labels,
        classes,
        BUILTIN_TEST_FRACTION,
        DEFAULT_SPLIT_SEED,
    )
}

/// The number of classes of a set of labels: the largest plus one.
fn class_count(labels: &[u32]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

/// Splits a table of examples into train and test with [`stratified_split`].
fn split_table(
    name: &str,
    features: Features,
    shape: Vec<usize>,
    labels: Vec<u32>,
    classes: usize,
    test_fraction: f64,
    seed: u64,
) -> Result<Dataset, DataError> {
    let (train_rows, test_rows) = stratified_split(&labels, test_fraction, seed);
    let width: usize = shape.iter().product();
    let targets = Targets::Classes { labels, classes };
    let dataset: Arc<str> = Arc::from(name);
    let part = |rows: &[usize]| {
        Split::table(
            dataset.clone(),
            rows.len(),
            features.select(width, rows),
            shape.clone(),
            targets.select(rows),
        )
    };
    Ok(Dataset {
        name: name.to_string(),
        train: part(&train_rows),
        test: part(&test_rows),
        classes: Some(classes),
        vocab: None,
        example_shape: shape.clone(),
    })
}

/// Row indices of a train and a test part, each in ascending order: every class gives
/// `round(count · test_fraction)` of its rows, chosen by a seeded shuffle, to the test part.
pub fn stratified_split(labels: &[u32], test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); class_count(labels)];
    for (row, &label) in labels.iter().enumerate() {
        by_class[label as usize].push(row);
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for mut rows in by_class {
        rows.shuffle(&mut rng);
        let held_out = (rows.len() as f64 * test_fraction.clamp(0.0, 1.0)).round() as usize;
        test.extend_from_slice(&rows[..held_out]);
        train.extend_from_slice(&rows[held_out..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The bytes of a file; a missing file is [`DataError::MissingFile`].
fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|error| open_error(path, error))
}

/// The error for a file that cannot be opened or read.
fn open_error(path: &Path, error: std::io::Error) -> DataError {
    match error.kind() {
        std::io::ErrorKind::NotFound => DataError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            error,
        },
    }
}

/// Decompresses gzip data (recognised by its magic bytes `1f 8b`); other data is returned as
/// it is.
fn gunzip_if_gzipped(bytes: Vec<u8>, file: &str) -> Result<Vec<u8>, DataError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|error| DataError::Gzip {
            file: file.to_string(),
            error,
        })?;
    Ok(out)
}
