//! Named tensors in NumPy `.npz` files: parameters, batches, gradients and checkpoints.
//!
//! Files are numpy's own format (a zip of `.npy` arrays), readable with `np.load`. Writes go
//! to a temporary file in the same directory that is renamed over the target, so a crash or a
//! kill mid-write never leaves a half-written file where a good one was.

use crate::interp::Real;
use ndarray::ArrayD;
use ndarray_npy::{NpzReader, NpzWriter};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Tensors by name, of `f32` unless said otherwise (`Arrays<f64>` in double precision).
pub type Arrays<F = f32> = BTreeMap<String, ArrayD<F>>;

/// Why a `.npz` file could not be read or written.
#[derive(Debug)]
pub struct NpzError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for NpzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for NpzError {}

fn fail(path: &Path, message: impl fmt::Display) -> NpzError {
    NpzError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads every array of a `.npz` file as `f32` (float64 arrays are converted).
pub fn read(path: &Path) -> Result<Arrays, NpzError> {
    read_as(path)
}

/// Reads every array of a `.npz` file as `F`: float32 and float64 arrays are both accepted,
/// and converted (an `f32` widens to `f64` exactly; an `f64` rounds to the nearest `f32`).
pub fn read_as<F: Real>(path: &Path) -> Result<Arrays<F>, NpzError> {
    let file = File::open(path).map_err(|e| fail(path, format!("cannot open: {e}")))?;
    let invalid = |e: &dyn fmt::Display| fail(path, format!("not a valid .npz file: {e}"));
    // numpy's members are `<array>.npy`; anything else is a damaged name, or not numpy's.
    let names: Vec<String> = zip::ZipArchive::new(&file)
        .map_err(|e| invalid(&e))?
        .file_names()
        .map(str::to_string)
        .collect();
    if let Some(odd) = names.iter().find(|n| !n.ends_with(".npy")) {
        return Err(fail(
            path,
            format!(
                "not a valid .npz file: its member `{}` is not a `.npy` array (the file is damaged, or was not written by numpy's `savez`)",
                odd.escape_default()
            ),
        ));
    }
    let mut npz = NpzReader::new(file).map_err(|e| invalid(&e))?;
    let mut out = Arrays::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let array = match npz.by_name::<ndarray::OwnedRepr<f32>, ndarray::IxDyn>(&name) {
            Ok(a) => a.mapv(|x| F::from_f64(f64::from(x))),
            Err(_) => match npz.by_name::<ndarray::OwnedRepr<f64>, ndarray::IxDyn>(&name) {
                Ok(a) => a.mapv(F::from_f64),
                Err(e) => {
                    return Err(fail(
                        path,
                        format!("array `{key}` is not float32 or float64: {e}"),
                    ))
                }
            },
        };
        out.insert(key, array);
    }
    Ok(out)
}

/// Writes arrays as a `.npz` file, atomically (temporary file, then rename), in their own
/// type (float32 or float64).
pub fn write<F: ndarray_npy::WritableElement>(
    path: &Path,
    arrays: &Arrays<F>,
) -> Result<(), NpzError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(path, "not a file path"))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| fail(&tmp, format!("cannot create: {e}")))?;
        let mut npz = NpzWriter::new(file);
        for (name, array) in arrays {
            npz.add_array(name.as_str(), array)
                .map_err(|e| fail(path, format!("cannot write array `{name}`: {e}")))?;
        }
        let file = npz
            .finish()
            .map_err(|e| fail(path, format!("cannot finish: {e}")))?;
        file.sync_all()
            .map_err(|e| fail(path, format!("cannot sync: {e}")))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| fail(path, format!("cannot rename into place: {e}")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
