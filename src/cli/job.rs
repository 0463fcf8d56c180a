//! Training commands run as one of several processes (`mpirun -n N pcg run ...`): which
//! process prints, and how the processes agree which of them reports a failure, so that none
//! waits for another that has left and an error common to all is printed once.

use super::{fail, CmdResult, Reported};
use crate::diag;
use crate::distributed::World;
use crate::source::Sources;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set on the processes of a job other than rank 0: they print nothing on stdout.
pub(super) static QUIET: AtomicBool = AtomicBool::new(false);

/// In a job of several processes, what this process would have written on stderr, held back
/// until the processes agree which of them reports (see [`report_job`]).
static HELD: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// Writes an error's text on stderr, or holds it back in a job of several processes.
pub(crate) fn error_text(text: String) {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    match held.as_mut() {
        Some(held) => held.push(text),
        None => eprint!("{text}"),
    }
}

/// Writes diagnostics on stderr (or holds them back, as [`error_text`]).
pub(crate) fn report_diagnostics(sources: &Sources, diagnostics: &[diag::Diagnostic]) {
    let holding = HELD.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    if holding {
        error_text(diag::render(sources, diagnostics));
    } else {
        diag::emit_to_stderr(sources, diagnostics);
    }
}

/// The job a training command runs in: MPI's world when started by `mpirun` (with the `mpi`
/// feature), else this process alone. A pcg built without the feature refuses to run as one
/// of several processes rather than have each train the whole model on its own.
fn join_job() -> Result<World, Reported> {
    #[cfg(feature = "mpi")]
    let world = crate::distributed::mpi::init().map_err(fail)?;
    #[cfg(not(feature = "mpi"))]
    let world = match crate::distributed::launched_size() {
        Some(n) if n > 1 => {
            return Err(fail(format!(
                "started as one of {n} processes, but this pcg was built without MPI: build it with `cargo build --release --features mpi`"
            )))
        }
        _ => World::single(),
    };
    if world.is_distributed() {
        QUIET.store(!world.is_root(), Ordering::Relaxed);
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }
    Ok(world)
}

/// Ends a command that ran in a job of several processes (every process calls it): one
/// process reports the job's failure — the one whose shard diverged, else the lowest that
/// failed — and the others stay silent, so that an error common to all is printed once.
fn report_job(world: &World, result: &CmdResult) {
    if !world.is_distributed() {
        return;
    }
    let diverged = world.diverged_ranks();
    let reporter = match diverged.first() {
        Some(&rank) => Some(rank),
        None => world.first(result.is_err()),
    };
    let held = HELD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    if reporter == Some(world.rank()) {
        for (k, text) in held.iter().enumerate() {
            if k == 0 && !world.is_root() {
                eprint!("rank {} of {}: ", world.rank(), world.size());
            }
            eprint!("{text}");
        }
    }
}

/// Runs a training command in its job (see [`join_job`], [`report_job`]).
pub(super) fn in_job(command: impl FnOnce(&World) -> CmdResult) -> CmdResult {
    let world = join_job()?;
    let result = command(&world);
    report_job(&world, &result);
    result
}

/// The processes of a job agree that every one is ready to train before any starts: one that
/// fails while preparing says so on its way out (this dropped unfinished), and
/// [`finish`](Ready::finish) tells the others. One process agrees with itself.
pub(super) struct Ready<'a> {
    world: &'a World,
    finished: bool,
}

impl<'a> Ready<'a> {
    pub(super) fn new(world: &'a World) -> Self {
        Ready {
            world,
            finished: false,
        }
    }

    /// Ready here; fails (silently: the process that failed reports) if another is not.
    pub(super) fn finish(mut self) -> CmdResult {
        self.finished = true;
        if self.world.is_distributed() && self.world.any(false) {
            return Err(Reported);
        }
        Ok(())
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        if !self.finished && self.world.is_distributed() {
            self.world.any(true);
        }
    }
}
