//! IDX files, the format of MNIST and Fashion-MNIST.
//!
//! An IDX file is a four-byte magic number — two zero bytes, an element type code, the number
//! of dimensions — then each dimension as a big-endian `u32`, then the elements in row-major
//! order. The image sets use only type `0x08` (unsigned bytes), which is all this reader
//! accepts; the element count must match the file's length exactly, so a truncated download is
//! reported rather than read as fewer images.

use super::error::{shape_text, DataError};
use super::split::{Features, Split, Targets};
use super::{gunzip_if_gzipped, Dataset};
use std::path::Path;
use std::sync::Arc;

/// The IDX element type code for unsigned bytes.
const UNSIGNED_BYTE: u8 = 0x08;

/// An array read from an IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements in row-major order.
    pub data: Vec<u8>,
}

/// Parses the (decompressed) bytes of an IDX file; `file` names it in errors. The elements
/// stay in the same buffer: a 47 MB image file is not copied.
pub fn parse_idx(mut bytes: Vec<u8>, file: &str) -> Result<IdxArray, DataError> {
    let Some((magic, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(DataError::IdxLength {
            file: file.to_string(),
            expected: 4,
            found: bytes.len() as u64,
        });
    };
    let [0, 0, UNSIGNED_BYTE, ndims] = *magic else {
        return Err(DataError::IdxMagic {
            file: file.to_string(),
            magic: magic.to_vec(),
        });
    };
    let ndims = usize::from(ndims);
    if ndims == 0 {
        return Err(DataError::IdxMagic {
            file: file.to_string(),
            magic: magic.to_vec(),
        });
    }
    let header = 4 + 4 * ndims as u64;
    if (rest.len() as u64) < 4 * ndims as u64 {
        return Err(DataError::IdxLength {
            file: file.to_string(),
            expected: header,
            found: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = rest[..4 * ndims]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    // At most 255 factors below 2^32 each: the product fits in u128.
    let elements = dims
        .iter()
        .fold(1u128, |acc, &d| acc.saturating_mul(d as u128));
    let expected = u128::from(header).saturating_add(elements);
    if expected != bytes.len() as u128 {
        return Err(DataError::IdxLength {
            file: file.to_string(),
            expected: u64::try_from(expected).unwrap_or(u64::MAX),
            found: bytes.len() as u64,
        });
    }
    bytes.drain(..4 + 4 * ndims);
    Ok(IdxArray { dims, data: bytes })
}

/// Writes an array as IDX bytes (uncompressed); the inverse of [`parse_idx`].
///
/// Returns `None` when `data` does not hold exactly the elements `dims` describe, or when
/// there are more than 255 dimensions or a dimension does not fit in 32 bits.
pub fn write_idx(dims: &[usize], data: &[u8]) -> Option<Vec<u8>> {
    let ndims = u8::try_from(dims.len()).ok()?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    if count != data.len() {
        return None;
    }
    let mut bytes = vec![0, 0, UNSIGNED_BYTE, ndims];
    for &d in dims {
        bytes.extend_from_slice(&u32::try_from(d).ok()?.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    Some(bytes)
}

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const FMNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's ten classes (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt,
/// sneaker, bag, ankle boot).
const FMNIST_CLASSES: usize = 10;

/// Loads Fashion-MNIST from `dir` (default [`FMNIST_DIR`]): each of the four IDX files may be
/// gzipped (`train-images-idx3-ubyte.gz`, as the package ships them) or not.
pub(crate) fn load_fmnist(dir: Option<&Path>) -> Result<Dataset, DataError> {
    let dir = dir.unwrap_or(Path::new(FMNIST_DIR));
    let name: Arc<str> = Arc::from("fmnist");
    let split = |prefix: &str| -> Result<Split, DataError> {
        let (images_file, images) = read_fmnist_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let (labels_file, labels) = read_fmnist_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let [count, rows, cols] = images.dims[..] else {
            return Err(DataError::IdxShape {
                file: images_file,
                problem: format!(
                    "dimensions {}, expected [images, rows, columns]",
                    shape_text(&images.dims)
                ),
            });
        };
        if labels.dims != [count] {
            return Err(DataError::IdxShape {
                file: labels_file,
                problem: format!(
                    "dimensions {}, expected [{count}] (one label for each image of {images_file})",
                    shape_text(&labels.dims)
                ),
            });
        }
        if let Some(&label) = labels
            .data
            .iter()
            .find(|&&l| usize::from(l) >= FMNIST_CLASSES)
        {
            return Err(DataError::LabelOutOfRange {
                file: labels_file,
                label: i64::from(label),
                classes: FMNIST_CLASSES,
            });
        }
        let features = Features::Bytes {
            data: images.data,
            divisor: 255.0,
            offset: 0.0,
        };
        let targets = Targets::Classes {
            labels: labels.data.into_iter().map(u32::from).collect(),
            classes: FMNIST_CLASSES,
        };
        Ok(Split::table(
            name.clone(),
            count,
            features,
            vec![rows, cols],
            targets,
        ))
    };
    let train = split("train")?;
    let test = split("t10k")?;
    Ok(Dataset {
        name: name.to_string(),
        example_shape: train.example_shape(),
        train,
        test,
        classes: Some(FMNIST_CLASSES),
        vocab: None,
    })
}

/// Reads `dir/stem.gz`, or else `dir/stem`, as IDX; returns the file's name and its array.
fn read_fmnist_file(dir: &Path, stem: &str) -> Result<(String, IdxArray), DataError> {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    let path = if gz.exists() || !plain.exists() {
        gz
    } else {
        plain
    };
    let bytes = std::fs::read(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => DataError::FmnistMissing { path: path.clone() },
        _ => DataError::Io {
            path: path.clone(),
            error,
        },
    })?;
    let file = path.display().to_string();
    let bytes = gunzip_if_gzipped(bytes, &file)?;
    let array = parse_idx(bytes, &file)?;
    Ok((file, array))
}
