//! The user's own arrays, from a NumPy `.npz` archive.
//!
//! The archive holds four arrays (save them with
//! `np.savez("mine.npz", x_train=..., y_train=..., x_test=..., y_test=...)`):
//!
//! - `x_train`, `x_test` — the inputs, shape `[n, ...]`, the same `...` in both. Unsigned bytes
//!   are kept as bytes (and not rescaled); every other numeric type is read as `f32`.
//! - `y_train`, `y_test` — the targets, `n` of them, as many as their inputs. A one-dimensional
//!   array of integers holds class labels (the number of classes is the largest label plus
//!   one); any other array — floats, or more than one dimension — holds target values, shape
//!   `[n, ...]`, the same `...` in both.
//!
//! Without those four, the archive holds named arrays: `<name>_train` and `<name>_test` for
//! each of the model's inputs and targets (`img_train`, `mask_train`, `img_test`, ...), each
//! read by the same rules (bytes kept, one-dimensional integers as class labels), all of one
//! split with the same number of examples. A model with one input (or one target) may also
//! take `x_*` (`y_*`): `x_train` and `x_test` alone feed an autoencoder, which has no target.

use super::error::{shape_text, DataError};
use super::split::{Column, ColumnData, Features, Split, Targets};
use super::Dataset;
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError, ReadableElement};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// An array of the element types a data set can use.
pub enum Array {
    Bytes(ArrayD<u8>),
    Integers(ArrayD<i64>),
    Floats(ArrayD<f32>),
}

impl Array {
    fn shape(&self) -> &[usize] {
        match self {
            Array::Bytes(a) => a.shape(),
            Array::Integers(a) => a.shape(),
            Array::Floats(a) => a.shape(),
        }
    }

    /// The elements in row-major order, as `f32`.
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Array::Bytes(a) => a.iter().map(|&v| f32::from(v)).collect(),
            Array::Integers(a) => a.iter().map(|&v| v as f32).collect(),
            Array::Floats(a) => a.iter().copied().collect(),
        }
    }
}

struct Archive<'p> {
    path: &'p Path,
    reader: NpzReader<File>,
    names: Vec<String>,
}

/// Where a data set's arrays come from (a file, or the caller's arrays), for messages.
struct Origin<'p> {
    path: &'p Path,
}

impl Origin<'_> {
    fn error(&self, problem: String) -> DataError {
        DataError::Npz {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    fn shape_error(&self, array: &str, expected: String, found: &[usize]) -> DataError {
        DataError::NpzShape {
            path: self.path.to_path_buf(),
            array: array.to_string(),
            expected,
            found: found.to_vec(),
        }
    }
}

impl Archive<'_> {
    fn error(&self, problem: String) -> DataError {
        DataError::Npz {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    /// Reads the array `name` as `T`, or `None` if it holds another element type.
    fn read_as<T: ReadableElement>(&mut self, name: &str) -> Result<Option<ArrayD<T>>, DataError> {
        match self.reader.by_name(name) {
            Ok(array) => Ok(Some(array)),
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => Ok(None),
            Err(e) => Err(self.error(format!("array `{name}` cannot be read: {e}"))),
        }
    }

    /// Reads the array `name`, in whichever supported element type it is stored.
    fn read(&mut self, name: &str) -> Result<Array, DataError> {
        if !self.names.iter().any(|n| n == name) {
            return Err(DataError::NpzMissingArray {
                path: self.path.to_path_buf(),
                array: name.to_string(),
                found: self.names.clone(),
            });
        }
        // The wrong element type is detected from the header, before any data is read.
        macro_rules! first_of {
            ($($t:ty => $wrap:expr),* $(,)?) => {
                $(if let Some(a) = self.read_as::<$t>(name)? {
                    return Ok($wrap(a));
                })*
            };
        }
        first_of!(
            u8 => Array::Bytes,
            f32 => Array::Floats,
            f64 => |a: ArrayD<f64>| Array::Floats(a.mapv(|v| v as f32)),
            i64 => Array::Integers,
            i32 => |a: ArrayD<i32>| Array::Integers(a.mapv(i64::from)),
            i16 => |a: ArrayD<i16>| Array::Integers(a.mapv(i64::from)),
            i8 => |a: ArrayD<i8>| Array::Integers(a.mapv(i64::from)),
            u16 => |a: ArrayD<u16>| Array::Integers(a.mapv(i64::from)),
            u32 => |a: ArrayD<u32>| Array::Integers(a.mapv(i64::from)),
            u64 => |a: ArrayD<u64>| Array::Integers(a.mapv(|v| i64::try_from(v).unwrap_or(i64::MAX))),
        );
        Err(self.error(format!(
            "array `{name}` has an element type other than integers or floats"
        )))
    }
}

/// Loads `x_train`, `y_train`, `x_test` and `y_test` from an `.npz` file.
pub(crate) fn load(path: &Path, allow_nonfinite: bool) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|error| super::open_error(path, error))?;
    let npz_error = |e: ReadNpzError| DataError::Npz {
        path: path.to_path_buf(),
        problem: format!("not a readable .npz archive: {e}"),
    };
    let mut reader = NpzReader::new(file).map_err(npz_error)?;
    let names = reader.names().map_err(npz_error)?;
    let mut archive = Archive {
        path,
        reader,
        names,
    };
    let legacy = ["x_train", "y_train", "x_test", "y_test"];
    let has = |name: &str| archive.names.iter().any(|n| n == name);
    if !legacy.iter().all(|n| has(n)) && archive.names.iter().any(|n| n.ends_with("_train")) {
        return named_arrays(&mut archive, allow_nonfinite);
    }
    let x_train = archive.read("x_train")?;
    let y_train = archive.read("y_train")?;
    let x_test = archive.read("x_test")?;
    let y_test = archive.read("y_test")?;
    let names = ["x_train", "y_train", "x_test", "y_test"];
    from_arrays(
        path,
        names,
        [x_train, y_train, x_test, y_test],
        allow_nonfinite,
    )
}

/// A data set of four arrays — train inputs and targets, test inputs and targets, named by
/// `names` in messages — with the rules of the module's header; `origin` names where they come
/// from (a file, or the caller).
pub fn from_arrays(
    origin: &Path,
    names: [&str; 4],
    [x_train, y_train, x_test, y_test]: [Array; 4],
    allow_nonfinite: bool,
) -> Result<Dataset, DataError> {
    let path = origin;
    let archive = Origin { path };
    let [x_train_name, y_train_name, x_test_name, y_test_name] = names;
    let Some((_, example_shape)) = x_train.shape().split_first() else {
        return Err(archive.shape_error(x_train_name, "[n, ...]".into(), x_train.shape()));
    };
    let example_shape = example_shape.to_vec();
    if x_test.shape().get(1..) != Some(&example_shape[..]) {
        let expected = format!("{} (as {x_train_name})", any_count(&example_shape));
        return Err(archive.shape_error(x_test_name, expected, x_test.shape()));
    }
    for (x, x_name, y, y_name) in [
        (&x_train, x_train_name, &y_train, y_train_name),
        (&x_test, x_test_name, &y_test, y_test_name),
    ] {
        let n = x.shape()[0];
        if y.shape().first() != Some(&n) {
            let expected = format!("[{n}, ...] (one target for each example of {x_name})");
            return Err(archive.shape_error(y_name, expected, y.shape()));
        }
    }
    let classes = class_count(
        &archive,
        &[(&y_train, y_train_name), (&y_test, y_test_name)],
    )?;
    let target_shape = y_train.shape()[1..].to_vec();
    if classes.is_none() && y_test.shape()[1..] != target_shape[..] {
        let expected = format!("{} (as {y_train_name})", any_count(&target_shape));
        return Err(archive.shape_error(y_test_name, expected, y_test.shape()));
    }

    if !allow_nonfinite {
        let file = path.display().to_string();
        let mut arrays = vec![(&x_train, x_train_name), (&x_test, x_test_name)];
        if classes.is_none() {
            arrays.extend([(&y_train, y_train_name), (&y_test, y_test_name)]);
        }
        for (array, array_name) in arrays {
            if let Array::Floats(a) = array {
                let width = a.shape()[1..].iter().product();
                let values = a.as_standard_layout();
                let values = values.as_slice().expect("standard layout");
                super::check_finite(&file, array_name, values, width)?;
            }
        }
    }
    let name: Arc<str> = Arc::from(path.display().to_string());
    let split = |x: &Array, y: &Array| {
        let features = match x {
            Array::Bytes(a) => Features::Bytes {
                data: a.iter().copied().collect(),
                divisor: 1.0,
                offset: 0.0,
            },
            other => Features::Floats(other.to_f32()),
        };
        let targets = match classes {
            Some(classes) => Targets::Classes {
                labels: class_labels(y),
                classes,
            },
            None => Targets::Values {
                data: y.to_f32(),
                shape: target_shape.clone(),
            },
        };
        Split::table(
            name.clone(),
            x.shape()[0],
            features,
            example_shape.clone(),
            targets,
        )
    };
    Ok(Dataset {
        name: name.to_string(),
        train: split(&x_train, &y_train),
        test: split(&x_test, &y_test),
        classes,
        vocab: None,
        example_shape: example_shape.clone(),
    })
}

/// A data set of named arrays, `<name>_train` and `<name>_test` for every name.
fn named_arrays(archive: &mut Archive, allow_nonfinite: bool) -> Result<Dataset, DataError> {
    let mut names: Vec<String> = archive
        .names
        .iter()
        .filter_map(|n| n.strip_suffix("_train").map(str::to_string))
        .collect();
    names.sort();
    let mut arrays = Vec::new();
    for name in names {
        let train = archive.read(&format!("{name}_train"))?;
        let test = archive.read(&format!("{name}_test"))?;
        arrays.push((name, train, test));
    }
    from_named_arrays(archive.path, arrays, allow_nonfinite)
}

/// A data set of named arrays, (name, train array, test array) for each of the model's inputs
/// and targets that it feeds, with the rules of the module's header; `origin` names where they
/// come from (a file, or the caller). In messages the arrays are `<name>_train` and
/// `<name>_test`.
pub fn from_named_arrays(
    origin: &Path,
    arrays: Vec<(String, Array, Array)>,
    allow_nonfinite: bool,
) -> Result<Dataset, DataError> {
    let origin = Origin { path: origin };
    let mut train = Vec::new();
    let mut test = Vec::new();
    for (name, a, b) in &arrays {
        let (train_name, test_name) = (format!("{name}_train"), format!("{name}_test"));
        let classes = class_count(&origin, &[(a, &train_name), (b, &test_name)])?;
        if classes.is_none() && a.shape().get(1..) != b.shape().get(1..) {
            let expected = format!("{} (as {train_name})", any_count(&a.shape()[1..]));
            return Err(origin.shape_error(&test_name, expected, b.shape()));
        }
        for (array, array_name, out) in [(a, &train_name, &mut train), (b, &test_name, &mut test)] {
            let Some(&count) = array.shape().first() else {
                return Err(origin.shape_error(array_name, "[n, ...]".into(), array.shape()));
            };
            if !allow_nonfinite {
                if let Array::Floats(values) = array {
                    let width = values.shape()[1..].iter().product();
                    let values = values.as_standard_layout();
                    let values = values.as_slice().expect("standard layout");
                    let file = origin.path.display().to_string();
                    super::check_finite(&file, array_name, values, width)?;
                }
            }
            let data = match classes {
                Some(classes) => ColumnData::Labels {
                    labels: class_labels(array),
                    classes,
                },
                None => ColumnData::Values {
                    features: match array {
                        Array::Bytes(a) => Features::Bytes {
                            data: a.iter().copied().collect(),
                            divisor: 1.0,
                            offset: 0.0,
                        },
                        other => Features::Floats(other.to_f32()),
                    },
                    shape: array.shape()[1..].to_vec(),
                },
            };
            out.push((
                array_name.clone(),
                count,
                Column {
                    name: name.clone(),
                    data,
                },
            ));
        }
    }
    let split = |columns: Vec<(String, usize, Column)>| -> Result<Split, DataError> {
        let count = columns.first().map_or(0, |c| c.1);
        if let Some((odd, n, _)) = columns.iter().find(|c| c.1 != count) {
            return Err(origin.error(format!(
                "`{odd}` has {n} examples, but `{}` has {count}: the arrays of one split hold the same examples",
                columns[0].0
            )));
        }
        let name: Arc<str> = Arc::from(origin.path.display().to_string());
        Ok(Split::columns(
            name,
            count,
            columns.into_iter().map(|c| c.2).collect(),
        ))
    };
    let train = split(train)?;
    let test = split(test)?;
    let example_shape = train.example_shape();
    Ok(Dataset {
        name: origin.path.display().to_string(),
        train,
        test,
        classes: None,
        vocab: None,
        example_shape,
    })
}

/// A shape with any number of examples: `[n, 8, 8]`.
fn any_count(example_shape: &[usize]) -> String {
    let mut dims = vec!["n".to_string()];
    dims.extend(example_shape.iter().map(usize::to_string));
    format!("[{}]", dims.join(", "))
}

/// The number of classes when every target array holds one-dimensional integer labels, or
/// `None` when they hold target values. Mixed kinds, and negative labels, are errors.
fn class_count(archive: &Origin, ys: &[(&Array, &str)]) -> Result<Option<usize>, DataError> {
    let is_labels =
        |y: &Array| y.shape().len() == 1 && matches!(y, Array::Bytes(_) | Array::Integers(_));
    let labelled = ys.iter().filter(|(y, _)| is_labels(y)).count();
    if labelled == 0 {
        return Ok(None);
    }
    if let Some((y, name)) = ys.iter().find(|(y, _)| !is_labels(y)) {
        return Err(archive.error(format!(
            "`{name}` (shape {}) holds target values, but the other targets are class labels \
             (one-dimensional integers); use the same kind for both",
            shape_text(y.shape())
        )));
    }
    let labels = |y: &Array| -> Vec<i64> {
        match y {
            Array::Bytes(a) => a.iter().map(|&v| i64::from(v)).collect(),
            Array::Integers(a) => a.iter().copied().collect(),
            Array::Floats(_) => Vec::new(),
        }
    };
    let largest = ys.iter().flat_map(|(y, _)| labels(y)).max().unwrap_or(-1);
    let classes = u32::try_from(largest.saturating_add(1))
        .map_err(|_| archive.error(format!("class label {largest} is too large")))?;
    for (y, name) in ys {
        if let Some(negative) = labels(y).into_iter().find(|&l| l < 0) {
            return Err(DataError::LabelOutOfRange {
                file: format!("{} (`{name}`)", archive.path.display()),
                label: negative,
                classes: classes as usize,
            });
        }
    }
    Ok(Some(classes as usize))
}

/// Class labels of an array already checked by [`class_count`].
fn class_labels(y: &Array) -> Vec<u32> {
    match y {
        Array::Bytes(a) => a.iter().map(|&v| u32::from(v)).collect(),
        Array::Integers(a) => a.iter().map(|&v| v as u32).collect(),
        Array::Floats(_) => Vec::new(),
    }
}
