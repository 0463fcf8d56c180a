//! The job `mpirun` starts, over the system's MPI (the `mpi` feature: rsmpi over Open MPI).

use super::{Collective, World};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use std::sync::{Arc, Mutex};

/// MPI's world communicator; MPI is finalised when the last [`World`] holding it is dropped.
struct Mpi {
    /// Calls are made one at a time (MPI was initialised for calls from one thread), each
    /// receiving into the buffer the last one sent from (kept, so that a step allocates
    /// nothing).
    world: Mutex<(SimpleCommunicator, Vec<f32>)>,
    rank: usize,
    size: usize,
    _universe: Universe,
}

// SAFETY: every MPI call goes through the mutex, one at a time, and the training loop makes
// them from the thread that initialised MPI (the compiled step calls its exchange on the
// calling thread).
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, data: &mut Vec<f32>) {
        let mut guard = self.world.lock().unwrap_or_else(|e| e.into_inner());
        let (world, receive) = &mut *guard;
        receive.resize(data.len(), 0.0);
        world.all_reduce_into(&data[..], &mut receive[..], SystemOperation::sum());
        std::mem::swap(data, receive);
    }

    fn sum_f64(&self, data: &mut [f64]) {
        let send = data.to_vec();
        let guard = self.world.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .all_reduce_into(&send[..], data, SystemOperation::sum());
    }
}

/// The job this process belongs to: MPI's world when it was started by a launcher, else one
/// process (without initialising MPI).
pub fn init() -> Result<World, String> {
    if super::launched_size().is_none() && std::env::var_os("PMIX_RANK").is_none() {
        return Ok(World::single());
    }
    let Some(universe) = mpi::initialize() else {
        return Err("MPI could not be initialised".into());
    };
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    Ok(World::over(Arc::new(Mpi {
        world: Mutex::new((world, Vec::new())),
        rank,
        size,
        _universe: universe,
    })))
}
