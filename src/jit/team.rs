//! Work sharing for the runtime kernels: the calling thread and a few long-lived helper
//! threads split one job's chunks between them.
//!
//! A job is `chunks` independent calls `work(i)`. Every participant — the caller included —
//! claims the next unclaimed chunk from a shared counter until none is left, so a helper that
//! is late (asleep, or preempted by another process) costs at most the chunk it is running:
//! the caller takes its share. The caller returns only when every chunk has finished and no
//! helper still holds the job.
//!
//! Helpers spin for a short while after each job, since the generated code calls the kernels
//! in quick succession, and then park until the next one. A pool with a separate queue (rayon)
//! blocks the caller instead and leaves three threads contending for two cores; measured on the
//! benchmark model's products that made a training step twice as slow, where this split runs
//! them 1.9× faster than one thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// One job: its chunks and how far they have got.
struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    chunks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// A chunk panicked (a bug in a kernel): counted as done so that nobody waits forever,
    /// and raised again on the calling thread.
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs unclaimed chunks until none is left.
    fn claim(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.chunks {
                return;
            }
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(i)));
            if run.is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

/// What the caller and the helpers share.
///
/// The job's lifetime is guarded Dekker-style: a helper announces itself in `active` before it
/// reads `live`, and the caller clears `live` before it waits for `active` to drain, so a
/// helper either sees the job retired or is waited for (all accesses sequentially consistent).
struct Shared {
    job: AtomicPtr<Job<'static>>,
    /// Bumped once per job; helpers watch it.
    generation: AtomicUsize,
    live: AtomicBool,
    active: AtomicUsize,
    /// Helpers parked (rather than spinning) that need an unpark.
    parked: AtomicUsize,
}

struct Team {
    shared: &'static Shared,
    helpers: Vec<Thread>,
    /// One job at a time; a second caller runs its job alone rather than wait.
    caller: Mutex<()>,
}

static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Whether jobs this thread starts are shared with the helpers (see [`set_sharing`]).
    static SHARING: Cell<bool> = const { Cell::new(true) };
}

/// Whether the jobs the calling thread starts from now on are shared with the helpers (the
/// default) or run on the calling thread alone. Either way every chunk runs exactly once and
/// computes the same numbers: only who runs it changes.
pub fn set_sharing(on: bool) {
    SHARING.set(on);
}

/// The team, started on first use with one helper per core beyond the first. `None` on a
/// single core.
fn team() -> Option<&'static Team> {
    let team = TEAM.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicUsize::new(0),
            live: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
        }));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let helpers = (1..cores)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("pcg-helper-{i}"))
                    .spawn(move || help(shared))
                    .ok()
                    .map(|handle| handle.thread().clone())
            })
            .collect();
        Team {
            shared,
            helpers,
            caller: Mutex::new(()),
        }
    });
    (!team.helpers.is_empty()).then_some(team)
}

/// A helper's life: wait for a new job, take chunks of it, repeat.
fn help(shared: &'static Shared) {
    super::runtime::FlushSubnormals::forever();
    let mut seen = shared.generation.load(SeqCst);
    loop {
        let idle_since = Instant::now();
        let mut polls = 0u32;
        while shared.generation.load(SeqCst) == seen {
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(1024) || idle_since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            shared.parked.fetch_add(1, SeqCst);
            if shared.generation.load(SeqCst) == seen {
                std::thread::park();
            }
            shared.parked.fetch_sub(1, SeqCst);
        }
        seen = shared.generation.load(SeqCst);
        shared.active.fetch_add(1, SeqCst);
        if shared.live.load(SeqCst) {
            // SAFETY: `live` was set after the pointer was stored and is cleared before the
            // job is dropped, and the caller waits for `active` to drain before dropping it.
            let job = unsafe { &*shared.job.load(SeqCst) };
            job.claim();
        }
        shared.active.fetch_sub(1, SeqCst);
    }
}

/// The participants a job may have: the caller plus the helpers.
pub fn size() -> usize {
    team().map_or(1, |t| t.helpers.len() + 1)
}

/// Runs `work(0)`, …, `work(chunks - 1)`, each exactly once, shared between the calling
/// thread and the helpers; returns when all have finished.
pub fn run(chunks: usize, work: &(dyn Fn(usize) + Sync)) {
    let alone = || (0..chunks).for_each(work);
    let Some(team) = team().filter(|_| chunks > 1 && SHARING.get()) else {
        return alone();
    };
    let Ok(guard) = team.caller.try_lock() else {
        return alone();
    };
    let shared = team.shared;
    let job = Job {
        work,
        chunks,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
    };
    // The helpers only dereference the pointer while `live` is set, and `job` outlives that.
    let erased = (&job as *const Job<'_>).cast_mut().cast::<Job<'static>>();
    shared.job.store(erased, SeqCst);
    shared.live.store(true, SeqCst);
    shared.generation.fetch_add(1, SeqCst);
    if shared.parked.load(SeqCst) > 0 {
        team.helpers.iter().for_each(Thread::unpark);
    }
    job.claim();
    shared.live.store(false, SeqCst);
    while job.done.load(SeqCst) < chunks || shared.active.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    shared.job.store(std::ptr::null_mut(), SeqCst);
    drop(guard);
    assert!(!job.panicked.load(SeqCst), "a shared kernel panicked");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        for chunks in [0, 1, 2, 3, 7, 64] {
            let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..200 {
                run(chunks, &|i| {
                    counts[i].fetch_add(1, SeqCst);
                });
            }
            assert!(
                counts.iter().all(|c| c.load(SeqCst) == 200),
                "{chunks} chunks"
            );
        }
    }

    #[test]
    fn a_caller_that_does_not_share_runs_every_chunk_itself() {
        let caller = std::thread::current().id();
        let others = AtomicUsize::new(0);
        set_sharing(false);
        run(64, &|_| {
            if std::thread::current().id() != caller {
                others.fetch_add(1, SeqCst);
            }
        });
        set_sharing(true);
        assert_eq!(others.load(SeqCst), 0);
    }

    #[test]
    fn a_panicking_chunk_is_raised_on_the_caller_and_the_team_still_works() {
        let result = std::panic::catch_unwind(|| {
            run(4, &|i| {
                assert!(i != 2, "chunk 2 fails");
            })
        });
        assert!(result.is_err());
        // The team is not left poisoned: later jobs are shared again.
        assert!(team().is_none_or(|t| !t.caller.is_poisoned()));
        let count = AtomicUsize::new(0);
        run(4, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 4);
    }

    #[test]
    fn concurrent_callers_each_finish_their_job() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    let sum = AtomicUsize::new(0);
                    for _ in 0..100 {
                        run(5, &|i| {
                            sum.fetch_add(i + t, SeqCst);
                        });
                    }
                    assert_eq!(sum.load(SeqCst), 100 * (10 + 5 * t));
                });
            }
        });
    }
}
