//! The training loop: seeded shuffling, one engine step and one optimiser step per batch,
//! per-epoch test evaluation, checkpoints at the end of every epoch, and divergence detection.
//!
//! Determinism: the parameters come from the seed, each epoch's order from (seed, epoch), and
//! each step is a pure function of the parameters and the batch, so the same seed gives the
//! same result, and a run resumed from the checkpoint of epoch k ends exactly where an
//! uninterrupted run does.
//!
//! Interrupts: when `Settings::stop` is raised (by a signal handler), the loop finishes the
//! step under way, writes a checkpoint of the position inside the epoch (batches done, and the
//! epoch's sums so far) when `save` is set, and ends with [`TrainError::Interrupted`]. Resuming
//! from it continues with the epoch's next batch: the same batches, in the same order, through
//! the same steps, so the run ends where an uninterrupted one does.

use super::batch::{batch_size, data_leaves, LeafShape};
use super::engine::{Element, Engine, EngineError};
use super::optim::{Optimizer, STATE_PREFIX};
use crate::data::{self, Dataset, Leaves, Split};
use crate::distributed::World;
use crate::interp::Real;
use crate::ir::{LeafKind, Program};
use crate::npz::{self, Arrays};
use crate::sema::OptimizerConfig;
use ndarray::{ArrayD, Axis};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The checkpoint entry holding how many epochs are done.
pub const EPOCHS_DONE: &str = "meta.epochs_done";

/// The checkpoint entry holding how many batches of the next epoch are done (an interrupted
/// epoch), and the one holding that epoch's sums so far ([`EpochSums`]).
pub const BATCHES_DONE: &str = "meta.batches_done";
pub const EPOCH_SUMS: &str = "meta.epoch_sums";

/// Where training stands: epochs done, and batches done of the next (interrupted) epoch with
/// its sums so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Position {
    pub epochs: usize,
    pub batches: usize,
    pub sums: EpochSums,
}

/// The running sums of an epoch's per-batch reports, for its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochSums {
    pub loss: f64,
    pub energy: f64,
    pub energies: usize,
    pub steps: f64,
    pub stopped: usize,
}

impl EpochSums {
    fn add(&mut self, step: &super::engine::StepReport) {
        self.loss += step.loss;
        if let Some(e) = step.energy {
            self.energy += e;
            self.energies += 1;
        }
        if let Some(t) = step.relaxation_steps {
            self.steps += t;
            self.stopped += 1;
        }
    }

    fn to_array<F: Real>(self) -> ArrayD<F> {
        let values = [
            self.loss,
            self.energy,
            self.energies as f64,
            self.steps,
            self.stopped as f64,
        ];
        ndarray::arr1(&values.map(F::from_f64)).into_dyn()
    }

    fn from_array<F: Real>(a: &ArrayD<F>) -> Option<Self> {
        let v: Vec<f64> = a.iter().map(|&x| Real::to_f64(x)).collect();
        let [loss, energy, energies, steps, stopped] = v.as_slice() else {
            return None;
        };
        Some(EpochSums {
            loss: *loss,
            energy: *energy,
            energies: *energies as usize,
            steps: *steps,
            stopped: *stopped as usize,
        })
    }
}

/// What the loop needs besides the engine and the data.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
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
    /// Raised from outside (a signal handler) to stop after the step under way.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
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
    /// The line `pcg run` prints at the end of the epoch, of `epochs` in all.
    pub fn line(&self, epochs: usize) -> String {
        let acc = self
            .test_acc
            .map_or(String::new(), |a| format!(" test_acc={a:.4}"));
        let energy = self
            .energy
            .map_or(String::new(), |e| format!(" energy={e:.6}"));
        let steps = self
            .relaxation_steps
            .map_or(String::new(), |t| format!(" relaxation_steps={t:.1}"));
        format!(
            "epoch {}/{} train_loss={:.6} test_loss={:.6}{acc}{energy}{steps} seconds={:.2} examples_per_second={:.0}",
            self.epoch, epochs, self.train_loss, self.test_loss, self.seconds, self.examples_per_second
        )
    }

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
pub struct Outcome<F: Element = f32> {
    pub params: Arrays<F>,
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
    /// `Settings::stop` was raised: training stopped after batch `batch` of epoch `epoch`
    /// (1-based), with a checkpoint of that position in `saved` when one was asked for.
    /// `abandoned`: the next batch's step was under way and was abandoned (a compiled
    /// relaxation polls the request), nothing of it learnt.
    Interrupted {
        epoch: usize,
        batch: usize,
        batches: usize,
        abandoned: bool,
        saved: Option<PathBuf>,
        /// Where training stopped, to go on from.
        position: Position,
    },
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Data(e) | TrainError::Checkpoint(e) => f.write_str(e),
            TrainError::Step {
                epoch,
                batch,
                error:
                    error @ EngineError::Diverged {
                        relaxation_step, ..
                    },
                hint,
            } => {
                write!(
                    f,
                    "training diverged in epoch {epoch}, batch {batch}: {error}\n  help: try a smaller step size ({hint}); the last checkpoint, if any, is intact"
                )?;
                if relaxation_step.is_some() {
                    f.write_str("\n  help: or steady the relaxation in the inference block: `clip = 1.0` (norm-clipped steps), `rates { node = 0.01 }` for the node named, `optimizer = adam` (steps of size about `rate` whatever the errors' scale)")?;
                }
                Ok(())
            }
            TrainError::Step {
                epoch,
                batch,
                error,
                ..
            } => write!(f, "epoch {epoch}, batch {batch}: {error}"),
            TrainError::Interrupted {
                epoch,
                batch,
                batches,
                abandoned,
                saved,
                ..
            } => {
                write!(
                    f,
                    "interrupted after batch {batch} of {batches} in epoch {epoch}"
                )?;
                if *abandoned {
                    write!(f, " (the step of batch {} was abandoned)", batch + 1)?;
                }
                match saved {
                    Some(path) => write!(
                        f,
                        "; checkpoint written to {0}: continue with `--resume {0}`",
                        path.display()
                    ),
                    None => f.write_str("; nothing saved (no `--save`)"),
                }
            }
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
pub fn evaluate<F: Element>(
    engine: &mut dyn Engine<F>,
    forward: &Program,
    split: &Split,
    params: &Arrays<F>,
    remainder: Option<&Remainder>,
) -> Result<(f64, Option<f64>), TrainError> {
    let leaves = data_leaves(forward).map_err(TrainError::Data)?;
    // The target that predictions are compared with, for accuracy.
    let target = match leaves.targets.as_slice() {
        [(name, _)] => Some(name.clone()),
        _ => None,
    };
    // Shared between processes, each global batch is split into one shard per process.
    let world = engine.world().clone();
    let shard = batch_size(&leaves);
    let b = shard * world.size();
    let batches = split.len() / b;
    if batches == 0 && remainder.is_none() {
        return Err(TrainError::Data(format!(
            "the split has {} examples, fewer than one batch of {b}",
            split.len()
        )));
    }
    let (mut loss, mut examples) = (0.0, 0usize);
    let (mut correct, mut counted, mut has_prediction) = (0usize, 0usize, false);
    let mut tally = |l: f64, n: usize, prediction: Option<ArrayD<F>>, batch: &Arrays| {
        loss += l * n as f64;
        examples += n;
        let y = target.as_ref().and_then(|y| batch.get(y));
        if let (Some(p), Some(y)) = (prediction, y) {
            has_prediction = true;
            correct += agreements(&p, y);
            // One decision per lane of the last axis: per example for a classifier, per
            // position for a sequence model.
            counted += p.len() / p.shape().last().copied().unwrap_or(1).max(1);
        }
    };
    // A shard's loss is scaled so that the processes' losses sum to the global batch's
    // (`distributed::loss_scale`): each counts its loss for the whole batch, its examples
    // for its shard.
    let mut failure = None;
    for k in 0..batches {
        let indices: Vec<usize> = world.shard(k * b, b).collect();
        let evaluated = split
            .batch_of(&indices, &leaves)
            .map_err(|e| TrainError::Data(e.to_string()))
            .and_then(|batch| {
                let (l, prediction) = engine
                    .evaluate(params, &F::from_f32(batch.clone()))
                    .map_err(|error| evaluation_failed(k, error))?;
                Ok((l, prediction, batch))
            });
        match evaluated {
            Ok((l, prediction, batch)) => {
                tally(l * world.size() as f64, shard, prediction, &batch);
            }
            Err(e) => {
                // Every process still takes part in the sums below, so that none waits.
                failure = Some(e);
                break;
            }
        }
    }
    let rest = split.len() - batches * b;
    if let (Some(remainder), true, None) = (remainder, rest > 0 && world.is_root(), &failure) {
        let indices: Vec<usize> = (batches * b..split.len()).collect();
        let with_rows = |leaves: &[LeafShape]| -> Vec<LeafShape> {
            leaves
                .iter()
                .map(|(n, dims)| (n.clone(), [&[rest], &dims[1..]].concat()))
                .collect()
        };
        let shorter = Leaves {
            inputs: with_rows(&leaves.inputs),
            targets: with_rows(&leaves.targets),
        };
        let evaluated = split
            .batch_of(&indices, &shorter)
            .map_err(|e| TrainError::Data(e.to_string()))
            .and_then(|batch| {
                let mut env: crate::interp::Bindings<F> = params.clone();
                env.extend(F::from_f32(batch.clone()));
                // Dropout is off when evaluating.
                env.extend(F::from_f32(super::batch::noise(&remainder.eval, None)));
                let out = crate::interp::eval_outputs(&remainder.eval, &env)
                    .map_err(|e| evaluation_failed(batches, e.into()))?;
                Ok((out, batch))
            });
        match evaluated {
            Ok((mut out, batch)) => {
                let l = out
                    .get("loss")
                    .and_then(|l| l.iter().next().copied())
                    .map_or(f64::NAN, Real::to_f64);
                tally(l, rest, out.remove("prediction"), &batch);
            }
            Err(e) => failure = Some(e),
        }
    }
    let mut sums = [
        loss,
        examples as f64,
        correct as f64,
        counted as f64,
        f64::from(u8::from(has_prediction)),
        f64::from(u8::from(failure.is_some())),
    ];
    world.sum(&mut sums);
    if let Some(e) = failure {
        return Err(e);
    }
    if sums[5] > 0.0 {
        return Err(TrainError::Data(
            "the evaluation failed on another process".into(),
        ));
    }
    let [loss, examples, correct, counted, has_prediction, _] = sums;
    let acc = (has_prediction > 0.0 && counted > 0.0).then(|| correct / counted);
    Ok((loss / examples, acc))
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
fn agreements<F: Real>(prediction: &ArrayD<F>, target: &ArrayD<f32>) -> usize {
    let last = Axis(prediction.ndim() - 1);
    argmax(prediction, last)
        .iter()
        .zip(argmax(target, last))
        .filter(|(a, b)| **a == *b)
        .count()
}

/// The index of the largest element of each lane along `axis` (the first of equals).
fn argmax<F: Real>(a: &ArrayD<F>, axis: Axis) -> Vec<usize> {
    a.lanes(axis)
        .into_iter()
        .map(|lane| {
            lane.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    let v = Real::to_f64(v);
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect()
}

/// Loads a checkpoint: parameters (checked against the model), optimiser state and the
/// position training had reached.
pub fn load_checkpoint<F: Element>(
    path: &std::path::Path,
    forward: &Program,
    optimizer: &mut Optimizer<F>,
) -> Result<(Arrays<F>, Position), TrainError> {
    let arrays = npz::read_as::<F>(path).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let params: Arrays<F> = arrays
        .iter()
        .filter(|(k, _)| !k.starts_with(STATE_PREFIX) && !k.starts_with("meta."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    super::batch::check_arrays(forward, &[LeafKind::Param], &params, path)
        .map_err(TrainError::Checkpoint)?;
    optimizer.restore(&arrays);
    let done = arrays
        .get(EPOCHS_DONE)
        .and_then(|a| a.iter().next().map(|&x| Real::to_f64(x)))
        .ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{}: not a pcg checkpoint (no `{EPOCHS_DONE}`)",
                path.display()
            ))
        })?;
    let batches = arrays
        .get(BATCHES_DONE)
        .and_then(|a| a.iter().next().map(|&x| Real::to_f64(x)))
        .unwrap_or(0.0) as usize;
    let sums = match arrays.get(EPOCH_SUMS) {
        Some(a) => EpochSums::from_array(a).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{}: `{EPOCH_SUMS}` is not the five sums of an epoch",
                path.display()
            ))
        })?,
        None => EpochSums::default(),
    };
    let position = Position {
        epochs: done as usize,
        batches,
        sums,
    };
    Ok((params, position))
}

/// Writes a checkpoint: the parameters, the optimiser's state and the position training has
/// reached (replacing any file at `path` atomically).
pub fn save_checkpoint<F: Element>(
    path: &std::path::Path,
    params: &Arrays<F>,
    optimizer: &Optimizer<F>,
    position: Position,
) -> Result<(), TrainError> {
    let mut arrays = params.clone();
    arrays.extend(optimizer.state());
    arrays.insert(
        EPOCHS_DONE.into(),
        ndarray::arr0(F::from_f64(position.epochs as f64)).into_dyn(),
    );
    if position.batches > 0 {
        arrays.insert(
            BATCHES_DONE.into(),
            ndarray::arr0(F::from_f64(position.batches as f64)).into_dyn(),
        );
        arrays.insert(EPOCH_SUMS.into(), position.sums.to_array());
    }
    npz::write(path, &arrays).map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// [`save_checkpoint`] by rank 0 of `world` alone; every process learns whether it worked.
fn save_on_root<F: Element>(
    world: &World,
    path: &std::path::Path,
    params: &Arrays<F>,
    optimizer: &Optimizer<F>,
    position: Position,
) -> Result<(), TrainError> {
    let saved = if world.is_root() {
        save_checkpoint(path, params, optimizer, position)
    } else {
        Ok(())
    };
    if world.is_distributed() && world.any(saved.is_err()) && saved.is_ok() {
        return Err(TrainError::Checkpoint(format!(
            "rank 0 could not write the checkpoint {}",
            path.display()
        )));
    }
    saved
}

/// Stops training at `position` (of an epoch of `batches` batches), checkpointing it when
/// the settings ask for checkpoints: the error that says so.
fn interrupt<F: Element>(
    engine: &mut dyn Engine<F>,
    settings: &Settings,
    batches: usize,
    position: Position,
    abandoned: bool,
) -> TrainError {
    if let Some(path) = &settings.save {
        let (params, optimizer) = engine.trained();
        let world = engine.world().clone();
        if let Err(e) = save_on_root(&world, path, &params, &optimizer, position) {
            return e;
        }
    }
    TrainError::Interrupted {
        epoch: position.epochs + 1,
        batch: position.batches,
        batches,
        abandoned,
        saved: settings.save.clone(),
        position,
    }
}

/// Trains from `params` (epoch `start` onwards) for the settings' epochs. Shared between
/// processes (the engine's [`World`]), every global batch is split into one shard per
/// process, and rank 0 alone writes checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn train<F: Element>(
    engine: &mut dyn Engine<F>,
    forward: &Program,
    dataset: &Dataset,
    settings: &Settings,
    mut params: Arrays<F>,
    optimizer: Optimizer<F>,
    start: Position,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome<F>, TrainError> {
    let leaves = data_leaves(forward).map_err(TrainError::Data)?;
    // Shared between processes, each takes its shard of every global batch of `b` examples.
    let world = engine.world().clone();
    let b = batch_size(&leaves) * world.size();
    let all = dataset.train.len() / b;
    if settings.max_batches == Some(0) {
        return Err(TrainError::Data(
            "the batches per epoch (max_batches) must be at least 1".to_string(),
        ));
    }
    let batches = settings.max_batches.map_or(all, |m| m.min(all));
    if start.epochs >= settings.epochs {
        return Err(TrainError::Data(format!(
            "nothing to train: {} epoch(s) are done already and training ends after epoch {} (the count of epochs includes those done)",
            start.epochs, settings.epochs
        )));
    }
    if start.batches > 0 && start.batches >= batches && batches > 0 {
        return Err(TrainError::Data(format!(
            "nothing to train in epoch {}: {} of its batches are done already, and it has {batches} here (fewer batches per epoch than the run that stopped there: resume without max_batches, or with at least {})",
            start.epochs + 1,
            start.batches,
            start.batches + 1
        )));
    }
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
            epoch: start.epochs + 1,
            batch: 0,
            error,
            hint: settings.hint.clone(),
        })?;
    for epoch in start.epochs..settings.epochs {
        let t0 = Instant::now();
        let order = data::epoch_order(dataset.train.len(), settings.seed, epoch);
        // An interrupted epoch goes on from its next batch.
        let (first, mut sums) = if epoch == start.epochs {
            (start.batches.min(batches), start.sums)
        } else {
            (0, EpochSums::default())
        };
        for k in first..batches {
            let batch = dataset
                .train
                .batch_of(&order[world.shard(k * b, b)], &leaves)
                .map(F::from_f32)
                .map_err(|e| TrainError::Data(e.to_string()))?;
            let fail = |error| TrainError::Step {
                epoch: epoch + 1,
                batch: k + 1,
                error,
                hint: settings.hint.clone(),
            };
            let asked = || settings.stop.is_some_and(|s| s.load(Ordering::SeqCst));
            // Shared between processes, the step's exchange carries each one's request to
            // stop, so that every process stops after the same step.
            if world.is_distributed() {
                world.ask_to_stop(asked());
            }
            let step = match engine.train_step(&batch) {
                // A compiled relaxation saw the request and abandoned this batch's step.
                Err(EngineError::Interrupted) => {
                    let position = Position {
                        epochs: epoch,
                        batches: k,
                        sums,
                    };
                    return Err(interrupt(engine, settings, batches, position, true));
                }
                step => step.map_err(fail)?,
            };
            sums.add(&step);
            on(Event::Batch {
                epoch: epoch + 1,
                index: k + 1,
                batches,
                loss: step.loss,
                energy: step.energy,
            });
            let stop = if world.is_distributed() {
                world.stop_agreed()
            } else {
                asked()
            };
            if stop {
                let position = Position {
                    epochs: epoch,
                    batches: k + 1,
                    sums,
                };
                return Err(interrupt(engine, settings, batches, position, false));
            }
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
            train_loss: sums.loss / batches as f64,
            test_loss,
            test_acc,
            energy: (sums.energies > 0).then(|| sums.energy / sums.energies as f64),
            relaxation_steps: (sums.stopped > 0).then(|| sums.steps / sums.stopped as f64),
            seconds,
            examples_per_second: ((batches - first) * b) as f64 / seconds.max(1e-9),
        };
        if let Some(path) = &settings.save {
            let done = Position {
                epochs: epoch + 1,
                ..Position::default()
            };
            save_on_root(&world, path, &params, &optimizer, done)?;
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
