//! The training loop: seeded shuffling, one engine step and one optimiser step per batch,
//! per-epoch test evaluation, checkpoints at the end of every epoch, and divergence detection.
//!
//! Determinism: the parameters come from the seed, each epoch's order from (seed, epoch), and
//! each step is a pure function of the parameters and the batch, so the same seed gives the
//! same result, and a run resumed from the checkpoint of epoch k ends exactly where an
//! uninterrupted run does.

use super::batch::io_shapes;
use super::engine::{Engine, EngineError};
use super::optim::{Optimizer, STATE_PREFIX};
use crate::data::{self, Dataset, Split};
use crate::ir::{LeafKind, Program};
use crate::npz::{self, Arrays};
use crate::sema::OptimizerConfig;
use ndarray::{ArrayD, Axis};
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

/// The checkpoint entry holding how many epochs are done.
pub const EPOCHS_DONE: &str = "meta.epochs_done";

/// What the loop needs besides the engine and the data.
#[derive(Clone, Debug)]
pub struct Settings {
    pub epochs: usize,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub clip: Option<f64>,
    /// Write a checkpoint here at the end of every epoch.
    pub save: Option<PathBuf>,
    /// Describes the step sizes in divergence hints, e.g. "inference rate 0.5, learning rate 0.05".
    pub hint: String,
    /// Train on at most this many batches per epoch.
    pub max_batches: Option<usize>,
    /// The test examples that do not fill a batch, evaluated after the full batches.
    pub test_remainder: Option<Remainder>,
}

/// Metrics of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_acc: Option<f64>,
    /// Mean final relaxation energy over the epoch's batches (predictive coding).
    pub energy: Option<f64>,
    /// Mean relaxation steps run per batch, where a stopping tolerance may end them early.
    pub relaxation_steps: Option<f64>,
    pub seconds: f64,
    pub examples_per_second: f64,
}

impl EpochMetrics {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
            "energy": self.energy,
            "relaxation_steps": self.relaxation_steps,
            "seconds": self.seconds,
            "examples_per_second": self.examples_per_second,
        })
    }
}

/// Progress reported to the caller.
pub enum Event<'a> {
    Batch {
        epoch: usize,
        index: usize,
        batches: usize,
        loss: f64,
        energy: Option<f64>,
    },
    Epoch(&'a EpochMetrics),
}

/// The result of training.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub params: Arrays,
    pub history: Vec<EpochMetrics>,
    pub seconds: f64,
}

#[derive(Debug)]
pub enum TrainError {
    /// The data does not fit the model, or a batch could not be made.
    Data(String),
    /// A step failed; divergence comes with where it happened and what to try.
    Step {
        epoch: usize,
        batch: usize,
        error: EngineError,
        hint: String,
    },
    /// A checkpoint could not be read or written.
    Checkpoint(String),
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Data(e) | TrainError::Checkpoint(e) => f.write_str(e),
            TrainError::Step {
                epoch,
                batch,
                error: error @ EngineError::Diverged { .. },
                hint,
            } => write!(
                f,
                "training diverged in epoch {epoch}, batch {batch}: {error}\n  help: try a smaller step size ({hint}); the last checkpoint, if any, is intact"
            ),
            TrainError::Step { epoch, batch, error, .. } => write!(f, "epoch {epoch}, batch {batch}: {error}"),
        }
    }
}

impl std::error::Error for TrainError {}

/// The examples of a split that do not fill a batch: the model's evaluation program compiled
/// for their number (`engine::eval_program` of the model at that batch size). They are run on
/// the interpreter, once per evaluation.
#[derive(Clone, Debug)]
pub struct Remainder {
    pub eval: Program,
}

/// Mean loss per example and accuracy (where the model has a prediction) over a split: its
/// full batches through the engine, and the rest, when `remainder` is given, through its
/// program. A batch's loss is taken as the mean over its examples.
pub fn evaluate(
    engine: &mut dyn Engine,
    forward: &Program,
    split: &Split,
    params: &Arrays,
    remainder: Option<&Remainder>,
) -> Result<(f64, Option<f64>), TrainError> {
    let ((xn, xs), (yn, ys)) = io_shapes(forward).map_err(TrainError::Data)?;
    let b = xs[0];
    let batches = split.len() / b;
    if batches == 0 && remainder.is_none() {
        return Err(TrainError::Data(format!(
            "the split has {} examples, fewer than one batch of {b}",
            split.len()
        )));
    }
    let mut leaves = Arrays::new();
    let (mut loss, mut examples) = (0.0, 0usize);
    let (mut correct, mut counted, mut has_prediction) = (0usize, 0usize, false);
    let mut tally = |l: f64, n: usize, prediction: Option<ArrayD<f32>>, y: &ArrayD<f32>| {
        loss += l * n as f64;
        examples += n;
        if let Some(p) = prediction {
            has_prediction = true;
            correct += agreements(&p, y);
            counted += n;
        }
    };
    for k in 0..batches {
        let indices: Vec<usize> = (k * b..(k + 1) * b).collect();
        let (x, y) = split
            .batch(&indices, &xs, &ys)
            .map_err(|e| TrainError::Data(e.to_string()))?;
        leaves.insert(xn.clone(), x);
        leaves.insert(yn.clone(), y);
        let (l, prediction) = engine
            .evaluate(params, &leaves)
            .map_err(|error| evaluation_failed(k, error))?;
        tally(l, b, prediction, &leaves[&yn]);
    }
    let rest = split.len() - batches * b;
    if let (Some(remainder), true) = (remainder, rest > 0) {
        let indices: Vec<usize> = (batches * b..split.len()).collect();
        let with_rows = |dims: &[usize]| [&[rest], &dims[1..]].concat();
        let (x, y) = split
            .batch(&indices, &with_rows(&xs), &with_rows(&ys))
            .map_err(|e| TrainError::Data(e.to_string()))?;
        let mut env: crate::interp::Bindings<f32> = params.clone();
        env.insert(xn.clone(), x);
        env.insert(yn.clone(), y.clone());
        let mut out = crate::interp::eval_outputs(&remainder.eval, &env)
            .map_err(|e| evaluation_failed(batches, e.into()))?;
        let l = out
            .get("loss")
            .and_then(|l| l.iter().next().copied())
            .map_or(f64::NAN, f64::from);
        tally(l, rest, out.remove("prediction"), &y);
    }
    let acc = (has_prediction && counted > 0).then(|| correct as f64 / counted as f64);
    Ok((loss / examples as f64, acc))
}

fn evaluation_failed(batch: usize, error: EngineError) -> TrainError {
    TrainError::Step {
        epoch: 0,
        batch,
        error,
        hint: String::new(),
    }
}

/// How many rows have the same arg-max (over the last axis) in prediction and target.
fn agreements(prediction: &ArrayD<f32>, target: &ArrayD<f32>) -> usize {
    let last = Axis(prediction.ndim() - 1);
    let argmax = |a: &ArrayD<f32>| -> Vec<usize> {
        a.lanes(last)
            .into_iter()
            .map(|lane| {
                lane.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    })
                    .0
            })
            .collect()
    };
    argmax(prediction)
        .iter()
        .zip(argmax(target))
        .filter(|(a, b)| **a == *b)
        .count()
}

/// Loads a checkpoint: parameters (checked against the model), optimiser state and the number
/// of epochs done.
pub fn load_checkpoint(
    path: &std::path::Path,
    forward: &Program,
    optimizer: &mut Optimizer,
) -> Result<(Arrays, usize), TrainError> {
    let arrays = npz::read(path).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let params: Arrays = arrays
        .iter()
        .filter(|(k, _)| !k.starts_with(STATE_PREFIX) && !k.starts_with("meta."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    super::batch::check_arrays(forward, &[LeafKind::Param], &params, path)
        .map_err(TrainError::Checkpoint)?;
    optimizer.restore(&arrays);
    let done = arrays
        .get(EPOCHS_DONE)
        .and_then(|a| a.iter().next().copied())
        .ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{}: not a pcg checkpoint (no `{EPOCHS_DONE}`)",
                path.display()
            ))
        })?;
    Ok((params, done as usize))
}

fn save_checkpoint(
    path: &std::path::Path,
    params: &Arrays,
    optimizer: &Optimizer,
    epochs_done: usize,
) -> Result<(), TrainError> {
    let mut arrays = params.clone();
    arrays.extend(optimizer.state());
    arrays.insert(
        EPOCHS_DONE.into(),
        ndarray::arr0(epochs_done as f32).into_dyn(),
    );
    npz::write(path, &arrays).map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// Trains from `params` (epoch `start` onwards) for the settings' epochs.
#[allow(clippy::too_many_arguments)]
pub fn train(
    engine: &mut dyn Engine,
    forward: &Program,
    dataset: &Dataset,
    settings: &Settings,
    mut params: Arrays,
    optimizer: Optimizer,
    start: usize,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, TrainError> {
    let ((xn, xs), (yn, ys)) = io_shapes(forward).map_err(TrainError::Data)?;
    let b = xs[0];
    let all = dataset.train.len() / b;
    let batches = settings.max_batches.map_or(all, |m| m.min(all));
    if batches == 0 {
        return Err(TrainError::Data(format!(
            "{} has {} training examples, fewer than one batch of {b}",
            dataset.name,
            dataset.train.len()
        )));
    }
    let began = Instant::now();
    let mut history = Vec::new();
    engine
        .start(params.clone(), optimizer)
        .map_err(|error| TrainError::Step {
            epoch: start + 1,
            batch: 0,
            error,
            hint: settings.hint.clone(),
        })?;
    for epoch in start..settings.epochs {
        let t0 = Instant::now();
        let order = data::epoch_order(dataset.train.len(), settings.seed, epoch);
        let (mut loss_sum, mut energy_sum, mut energies) = (0.0, 0.0, 0usize);
        let (mut steps_sum, mut stopped) = (0.0, 0usize);
        let mut leaves = Arrays::new();
        for k in 0..batches {
            let (x, y) = dataset
                .train
                .batch(&order[k * b..(k + 1) * b], &xs, &ys)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            leaves.insert(xn.clone(), x);
            leaves.insert(yn.clone(), y);
            let fail = |error| TrainError::Step {
                epoch: epoch + 1,
                batch: k + 1,
                error,
                hint: settings.hint.clone(),
            };
            let step = engine.train_step(&leaves).map_err(fail)?;
            loss_sum += step.loss;
            if let Some(e) = step.energy {
                energy_sum += e;
                energies += 1;
            }
            if let Some(t) = step.relaxation_steps {
                steps_sum += t;
                stopped += 1;
            }
            on(Event::Batch {
                epoch: epoch + 1,
                index: k + 1,
                batches,
                loss: step.loss,
                energy: step.energy,
            });
        }
        let (trained, optimizer) = engine.trained();
        params = trained;
        let (test_loss, test_acc) = evaluate(
            engine,
            forward,
            &dataset.test,
            &params,
            settings.test_remainder.as_ref(),
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / batches as f64,
            test_loss,
            test_acc,
            energy: (energies > 0).then(|| energy_sum / energies as f64),
            relaxation_steps: (stopped > 0).then(|| steps_sum / stopped as f64),
            seconds,
            examples_per_second: (batches * b) as f64 / seconds.max(1e-9),
        };
        if let Some(path) = &settings.save {
            save_checkpoint(path, &params, &optimizer, epoch + 1)?;
        }
        on(Event::Epoch(&metrics));
        history.push(metrics);
    }
    Ok(Outcome {
        params,
        history,
        seconds: began.elapsed().as_secs_f64(),
    })
}
