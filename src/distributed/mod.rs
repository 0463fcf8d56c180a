//! Data-parallel training over processes (MPI ranks). Predictive coding suits it: the
//! relaxation is independent per example and every learning rule is a sum over the batch, so
//! each rank relaxes and learns on its shard of every global batch, and the ranks exchange
//! only the sums — one fused buffer per step holding the parameter updates, the loss and the
//! energy — and then apply the same optimiser step, so every rank keeps the same parameters.
//!
//! A shard's loss is scaled so that the ranks' sum is the global batch's loss: a loss that
//! averages over the batch (`mse` and `cross_entropy` divide by `dim(pred, 0)`, here the shard
//! size) is divided by the number of ranks, one that sums over it is kept as it is. Which of
//! the two a model's loss is, [`loss_scale`] measures on the model itself; a loss that is
//! neither (a term that does not depend on the examples) is refused. With the scale in the
//! loss, every per-example quantity — the output error, the relaxation, each example's energy
//! and update — is what one process computes on the global batch, and the exchanged sums are
//! the global ones.
//!
//! [`World`] is the job as the training loop sees it: its rank and size and the collectives it
//! uses. [`World::single`] is one process; the `mpi` feature provides the job `mpirun` starts
//! ([`mpi::init`]).

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::interp::{self, Bindings};
use crate::ir::Program;
use crate::npz::Arrays;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The collectives of a job of several processes.
pub trait Collective: Send + Sync {
    /// This process's rank, 0 ≤ rank < size.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Sums `data` elementwise over the processes, on every process. Every process calls it,
    /// with data of the same length. The sum may come back in another vector of the same
    /// length (swapped in, so that the reduction needs no copy of its own).
    fn sum_f32(&self, data: &mut Vec<f32>);
    /// As [`sum_f32`](Self::sum_f32), in double precision (metrics and counts).
    fn sum_f64(&self, data: &mut [f64]);
}

/// The processes a training run is shared between.
#[derive(Clone)]
pub struct World {
    comm: Option<Arc<dyn Collective>>,
    /// The ranks whose own part of the last exchange was not finite.
    diverged: Arc<Mutex<Vec<usize>>>,
    /// Whether this process asks to stop at the next exchange, and whether any process
    /// asked at the last one.
    stop: Arc<[AtomicBool; 2]>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "World(rank {} of {})", self.rank(), self.size())
    }
}

impl Default for World {
    fn default() -> Self {
        World::single()
    }
}

impl World {
    /// One process: every collective is the identity.
    pub fn single() -> World {
        World {
            comm: None,
            diverged: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// The job `comm` connects.
    pub fn over(comm: Arc<dyn Collective>) -> World {
        World {
            comm: Some(comm),
            diverged: Arc::default(),
            stop: Arc::default(),
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    pub fn size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.size())
    }

    /// Rank 0: the one that prints, and writes checkpoints, metrics and plots.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// More than one process.
    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }

    /// Sums `data` over the ranks, in place (every rank calls it).
    pub fn sum(&self, data: &mut [f64]) {
        if let Some(c) = self.comm.as_ref().filter(|c| c.size() > 1) {
            c.sum_f64(data);
        }
    }

    /// A step's exchange: sums `payload` over the ranks, in place, and records which ranks'
    /// own payload was not finite (see [`diverged_ranks`](Self::diverged_ranks)) and whether
    /// any asked to stop (see [`ask_to_stop`](Self::ask_to_stop)). The vector's spare
    /// capacity carries one flag per rank and the requests to stop.
    pub fn exchange(&self, payload: &mut Vec<f32>) {
        let Some(c) = self.comm.as_ref().filter(|c| c.size() > 1) else {
            return;
        };
        let (n, me, len) = (c.size(), c.rank(), payload.len());
        // Without an early exit, so that the test vectorises.
        let finite = !payload.iter().fold(false, |bad, x| bad | !x.is_finite());
        payload.resize(len + n + 1, 0.0);
        if !finite {
            payload[len + me] = 1.0;
        }
        if self.stop[0].load(Ordering::SeqCst) {
            payload[len + n] = 1.0;
        }
        c.sum_f32(payload);
        let bad = (0..n).filter(|&r| payload[len + r] != 0.0).collect();
        self.stop[1].store(payload[len + n] != 0.0, Ordering::SeqCst);
        payload.truncate(len);
        *self.diverged.lock().unwrap_or_else(|e| e.into_inner()) = bad;
    }

    /// Whether this process asks, at the next exchange, that every process stop after it.
    pub fn ask_to_stop(&self, asked: bool) {
        self.stop[0].store(asked, Ordering::SeqCst);
    }

    /// Whether any process asked to stop at the last exchange.
    pub fn stop_agreed(&self) -> bool {
        self.stop[1].load(Ordering::SeqCst)
    }

    /// The exchange as the compiled step calls it.
    pub fn exchange_fn(&self) -> crate::jit::Exchange {
        let world = self.clone();
        crate::jit::Exchange(Arc::new(move |data: &mut Vec<f32>| world.exchange(data)))
    }

    /// The ranks whose own part of the last exchange was not finite: where a step that
    /// diverged on every rank went wrong.
    pub fn diverged_ranks(&self) -> Vec<usize> {
        self.diverged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `yes` holds on any rank (every rank calls it).
    pub fn any(&self, yes: bool) -> bool {
        self.first(yes).is_some()
    }

    /// The lowest rank on which `flag` holds, as every rank sees it (every rank calls it).
    pub fn first(&self, flag: bool) -> Option<usize> {
        let (n, me) = (self.size(), self.rank());
        let mut flags = vec![0.0; n];
        if flag {
            flags[me] = 1.0;
        }
        self.sum(&mut flags);
        flags.iter().position(|&f| f != 0.0)
    }

    /// This rank's examples of a global batch of `global` examples starting at `start`.
    pub fn shard(&self, start: usize, global: usize) -> Range<usize> {
        let per = global / self.size();
        let from = start + self.rank() * per;
        from..from + per
    }
}

/// The number of processes an MPI launcher (`mpirun`, `srun`, ...) started this one among,
/// if one did.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The number of processes of this one's job on this machine, where the launcher says.
pub fn local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The examples each of `ranks` processes takes of a global batch of `global`, or why the
/// batch cannot be shared evenly.
pub fn shard_size(global: usize, ranks: usize) -> Result<usize, String> {
    if ranks == 0 || !global.is_multiple_of(ranks) || global < ranks {
        return Err(format!(
            "the batch of {global} examples cannot be shared evenly between {ranks} processes: choose a batch (`--batch`) that {ranks} divides"
        ));
    }
    Ok(global / ranks)
}

/// The factor a shard's loss is multiplied by so that the ranks' sum is the global batch's
/// loss: 1/N for a loss that averages over the batch's examples, 1 for one that sums them.
/// Measured on the model: `global` is its forward program at the global batch, `shard` at the
/// shard's; a random global batch is split into N shards, and the global loss is compared
/// with the mean and with the sum of the shards' losses. A mean may carry a term of its own
/// (a weight penalty: the mean of the shards' losses counts it once); a loss that is neither —
/// a sum with a term of its own, or one that couples the examples — is refused, with why.
pub fn loss_scale(
    shard: &Program,
    global: &Program,
    params: &Arrays,
    ranks: usize,
    seed: u64,
) -> Result<f64, String> {
    let batch = crate::train::batch::random_batch(global, seed);
    let loss = |p: &Program, b: &Bindings<f32>| -> Result<f64, String> {
        let mut env = params.clone();
        env.extend(b.clone());
        let out = interp::eval_outputs(p, &env).map_err(|e| e.to_string())?;
        out.get("loss")
            .and_then(|l| l.iter().next().copied())
            .map(f64::from)
            .ok_or_else(|| "the model has no loss".to_string())
    };
    let all = loss(global, &batch)?;
    let mut parts = 0.0;
    for r in 0..ranks {
        let rows = |x: &ndarray::ArrayD<f32>| {
            let per = x.shape()[0] / ranks;
            x.slice_axis(ndarray::Axis(0), (r * per..(r + 1) * per).into())
                .to_owned()
        };
        let part: Bindings<f32> = batch.iter().map(|(k, x)| (k.clone(), rows(x))).collect();
        parts += loss(shard, &part)?;
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-30);
    let n = ranks as f64;
    if close(all, parts / n) {
        Ok(1.0 / n)
    } else if close(all, parts) {
        Ok(1.0)
    } else {
        Err(format!(
            "the loss is neither a mean nor a sum over the batch's examples (a batch's loss is {all:.6e}, the sum of its {ranks} shards' {parts:.6e}), so it cannot be shared between processes: a loss that sums over the examples cannot carry a term of its own (a weight penalty belongs in the optimiser's `weight_decay`), and no term may couple the examples"
        ))
    }
}

/// `forward` with its loss multiplied by `scale` (see [`loss_scale`]).
pub fn scale_loss(forward: &mut Program, scale: f64) {
    if scale == 1.0 {
        return;
    }
    if let Some(loss) = forward.output("loss") {
        let scaled = forward.scale(loss, scale);
        forward.set_output("loss", scaled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_world_is_the_identity() {
        let w = World::single();
        let mut x = vec![1.0f32, f32::NAN];
        w.exchange(&mut x);
        assert_eq!(x[0], 1.0);
        assert!(w.diverged_ranks().is_empty());
        assert_eq!(w.first(true), Some(0));
        assert_eq!(w.first(false), None);
        assert_eq!(w.shard(64, 32), 64..96);
    }

    #[test]
    fn uneven_batches_are_refused() {
        assert_eq!(shard_size(32, 2), Ok(16));
        let e = shard_size(33, 2).unwrap_err();
        assert!(e.contains("33") && e.contains("2 processes"), "{e}");
        assert!(shard_size(1, 2).is_err());
    }
}
