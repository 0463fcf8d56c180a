//! Where a model's leaves get their values outside the training loop: named arrays from
//! `.npz` files (checked against the declared shapes), the first batch of the train block's
//! data, or seeded random data of the right shapes.

use crate::data::{self, DataSpec};
use crate::ir::{LeafKind, Program};
use crate::npz::Arrays;
use ndarray::ArrayD;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

/// An error naming the first array (by name) holding a NaN or an infinity, and the example
/// (index along its first axis) where it is.
pub fn check_finite(arrays: &Arrays, source: &Path) -> Result<(), String> {
    for (name, a) in arrays {
        let width = a.shape().iter().skip(1).product();
        let values = a.as_standard_layout();
        let values = values.as_slice().expect("standard layout");
        let file = source.display().to_string();
        data::check_finite(&file, name, values, width).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks that `arrays` holds every leaf of the given kinds with its declared shape. The error
/// names the array and both shapes.
pub fn check_arrays(
    program: &Program,
    kinds: &[LeafKind],
    arrays: &Arrays,
    source: &Path,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for &kind in kinds {
        for (id, name) in program.leaves(kind) {
            let declared = program.shape(id);
            match arrays.get(name) {
                None => problems.push(format!(
                    "{}: no array named `{name}` (the model's {} `{name}` has shape {declared})",
                    source.display(),
                    kind.keyword()
                )),
                Some(a) if a.shape() != declared.dims() => problems.push(format!(
                    "{}: array `{name}` has shape {:?}, but the model declares {} `{name}` with shape {declared}",
                    source.display(),
                    a.shape(),
                    kind.keyword()
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A leaf's name and shape.
pub type LeafShape = (String, Vec<usize>);

/// The model's input and target leaves with their shapes (data sets feed exactly one of each).
pub fn io_shapes(forward: &Program) -> Result<(LeafShape, LeafShape), String> {
    let inputs = forward.leaves(LeafKind::Input);
    let targets = forward.leaves(LeafKind::Target);
    match (inputs.as_slice(), targets.as_slice()) {
        ([(x, xn)], [(y, yn)]) => Ok((
            (xn.to_string(), forward.shape(*x).dims().to_vec()),
            (yn.to_string(), forward.shape(*y).dims().to_vec()),
        )),
        _ => Err(format!(
            "training on a data set needs a model with one input and one target; `{}` has {} and {}",
            forward.name,
            inputs.len(),
            targets.len()
        )),
    }
}

/// The first training batch of a data set, shaped for the model (one input and one target).
pub fn first_batch(
    program: &Program,
    spec: &DataSpec,
    allow_nonfinite: bool,
) -> Result<Arrays, String> {
    let ((xn, xs), (yn, ys)) = io_shapes(program)?;
    let set = data::load(spec, allow_nonfinite).map_err(|e| e.to_string())?;
    let b = xs.first().copied().unwrap_or(1);
    if set.train.len() < b {
        return Err(format!(
            "the data set has {} training examples, fewer than a batch of {b}",
            set.train.len()
        ));
    }
    let order = data::epoch_order(set.train.len(), 0, 0);
    let (x, y) = set
        .train
        .batch(&order[..b], &xs, &ys)
        .map_err(|e| e.to_string())?;
    Ok(Arrays::from([(xn, x), (yn, y)]))
}

/// Seeded values for every input and target: the declared default when there is one, else
/// standard normal inputs, and one-hot targets (a random class along the last axis) when the
/// last axis has more than one entry.
pub fn random_batch(program: &Program, seed: u64) -> Arrays {
    let mut out = Arrays::new();
    for kind in [LeafKind::Input, LeafKind::Target] {
        for (id, name) in program.leaves(kind) {
            let mut rng = super::init::stream(seed, &format!("data.{name}"));
            let dims = program.shape(id).dims().to_vec();
            let classes = dims.last().copied().unwrap_or(1);
            let array = if let Some(default) = program.inits.get(name) {
                super::init::sample(default, program.shape(id), &mut rng)
            } else if kind == LeafKind::Target && classes > 1 {
                let mut a = ArrayD::<f32>::zeros(dims.clone());
                let rows = a.len() / classes;
                let flat = a.as_slice_mut().expect("fresh arrays are contiguous");
                for r in 0..rows {
                    let c = (rand::Rng::random::<u64>(&mut rng) % classes as u64) as usize;
                    flat[r * classes + c] = 1.0;
                }
                a
            } else {
                ArrayD::from_shape_simple_fn(dims, || {
                    let x: f64 = StandardNormal.sample(&mut rng);
                    x as f32
                })
            };
            out.insert(name.to_string(), array);
        }
    }
    out
}
