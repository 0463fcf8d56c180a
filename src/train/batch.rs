//! Where a model's leaves get their values outside the training loop: named arrays from
//! `.npz` files (checked against the declared shapes), the first batch of the train block's
//! data, or seeded random data of the right shapes.

use crate::data;
use crate::ir::{LeafKind, Program};
use crate::npz::Arrays;
use ndarray::ArrayD;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

/// An error naming the first array (by name) holding a NaN or an infinity, and the example
/// (index along its first axis) where it is.
pub fn check_finite<F: crate::interp::Real>(
    arrays: &Arrays<F>,
    source: &Path,
) -> Result<(), String> {
    for (name, a) in arrays {
        if a.iter().all(|x| x.is_finite()) {
            continue;
        }
        let a = a.mapv(|x| crate::interp::Real::to_f64(x) as f32);
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
pub fn check_arrays<F>(
    program: &Program,
    kinds: &[LeafKind],
    arrays: &Arrays<F>,
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

/// The leaves of a one-batch computation without data: the parameters drawn from their
/// initialisers and a random batch, both seeded, in `F` (widened from f32, as `dtype = f64`
/// starts from the same values as f32).
pub fn seeded_leaves<F: crate::train::engine::Element>(program: &Program, seed: u64) -> Arrays<F> {
    let mut arrays = super::init::init_params(program, seed);
    arrays.extend(random_batch(program, seed));
    F::from_f32(arrays)
}

/// A leaf's name and shape.
pub type LeafShape = (String, Vec<usize>);

/// The leaves a data set's batch binds: the model's inputs and targets with their shapes. A
/// model needs an input, all with the same batch axis; it may have no target (an
/// autoencoder's loss reads only its inputs) or several (fed by named arrays).
pub fn data_leaves(forward: &Program) -> Result<data::Leaves, String> {
    let shapes = |kind| -> Vec<LeafShape> {
        forward
            .leaves(kind)
            .into_iter()
            .map(|(id, name)| (name.to_string(), forward.shape(id).dims().to_vec()))
            .collect()
    };
    let leaves = data::Leaves {
        inputs: shapes(LeafKind::Input),
        targets: shapes(LeafKind::Target),
    };
    let Some((first, shape)) = leaves.inputs.first() else {
        return Err(format!(
            "training on a data set needs a model with an input; `{}` has none",
            forward.name
        ));
    };
    let batch = shape.first().copied();
    if let Some((odd, s)) = leaves
        .inputs
        .iter()
        .chain(&leaves.targets)
        .find(|(_, s)| s.first().copied() != batch)
    {
        return Err(format!(
            "training on a data set needs every input and target to have the batch as axis 0, but `{first}` has shape {shape:?} and `{odd}` {s:?}"
        ));
    }
    Ok(leaves)
}

/// The batch size of a model's data leaves (axis 0 of its inputs).
pub fn batch_size(leaves: &data::Leaves) -> usize {
    leaves
        .inputs
        .first()
        .and_then(|(_, s)| s.first().copied())
        .unwrap_or(1)
}

/// The first training batch of a data set, shaped for the model's inputs and targets.
pub fn first_batch(program: &Program, set: &data::Dataset) -> Result<Arrays, String> {
    let leaves = data_leaves(program)?;
    let b = batch_size(&leaves);
    if set.train.len() < b {
        return Err(format!(
            "the data set has {} training examples, fewer than a batch of {b}",
            set.train.len()
        ));
    }
    let order = data::epoch_order(set.train.len(), 0, 0);
    set.train
        .batch_of(&order[..b], &leaves)
        .map_err(|e| e.to_string())
}

/// The dropout masks of a step: every `Noise` leaf of `program` drawn from its initialiser
/// for training step `step` (from a stream of the step and the leaf's name, so that a resumed
/// run draws what an uninterrupted one does), or all ones when evaluating (`None`).
pub fn noise(program: &Program, step: Option<u64>) -> Arrays {
    program
        .leaves(LeafKind::Noise)
        .into_iter()
        .map(|(id, name)| {
            let shape = program.shape(id);
            let mask = match (step, program.inits.get(name)) {
                (Some(t), Some(init)) => {
                    super::init::sample(init, shape, &mut super::init::stream(t, name))
                }
                _ => ArrayD::ones(shape.dims()),
            };
            (name.to_string(), mask)
        })
        .collect()
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
    // Dropout's masks, as a first training step draws them.
    out.extend(noise(program, Some(seed)));
    out
}
