//! Whether a compiled step shares its work with the team, chosen step by step from how long
//! the steps take.
//!
//! A step compiled for several threads hands chunks (blocks of a product, parts of a split
//! relaxation or scan) to the team's helpers. When another process keeps a core busy, the
//! hypervisor or the kernel can hold a helper off its core for whole timeslices, and the
//! chunk it has claimed holds up the step: measured on mlp_fmnist strict (batch 128) with a
//! busy loop pinned on the second core, two threads took 4.0–5.2 ms a step against 3.0 ms
//! alone. Running the same chunks on the calling thread instead (see `team::set_sharing`)
//! computes exactly the same numbers, so the choice can change from one step to the next.
//!
//! The pace keeps the mode in use and, now and then, tries the other one for a few steps:
//! it takes the other when the median of the trial is clearly below the median of the last
//! steps in the mode in use, and gives the trial up at a step far above it. A trial that loses makes the next one wait twice as long (up to
//! a limit), so a machine whose load does not change pays for trials less and less often.

/// Steps in a trial, and the steps of the mode in use it is compared with.
const TRIAL: usize = 3;
/// Steps between the end of a decision and the next trial, at first and at most.
const FIRST_WAIT: usize = 16;
const LONGEST_WAIT: usize = 256;
/// How much faster (as a fraction) the other mode's median must be to be taken.
const MARGIN: f64 = 0.05;
/// A trial step this much slower (as a fraction) than the mode in use's median ends the
/// trial there, lost: on a quiet machine a step alone takes up to twice as long as a shared
/// one (the LSTM's fixed-mode relaxation: 335 against 177 ms), and the two steps more that a
/// full trial would spend alone are most of its cost.
const GIVE_UP: f64 = 0.25;

/// The state of the choice for one compiled step.
#[derive(Clone, Debug)]
pub struct Pace {
    /// The mode in use: share the work with the team's helpers, or run it on the caller.
    sharing: bool,
    /// The last step times in the mode in use (seconds), the newest last.
    recent: Vec<f64>,
    /// The trial's step times, while a trial runs.
    trial: Option<Vec<f64>>,
    /// Steps left before the next trial starts.
    wait: usize,
    /// What the next wait will be if this trial loses.
    next_wait: usize,
    /// Steps run in each mode outside trials: (shared, alone).
    counts: (usize, usize),
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            sharing: true,
            recent: Vec::with_capacity(TRIAL),
            trial: None,
            // The first steps fault the arena's pages in: the first trial waits for them.
            wait: TRIAL + 1,
            next_wait: FIRST_WAIT,
            counts: (0, 0),
        }
    }
}

impl Pace {
    /// Whether the next step shares its work with the team.
    pub fn sharing(&self) -> bool {
        self.sharing != self.trial.is_some()
    }

    /// Records how long the step run in the mode [`Pace::sharing`] said took.
    pub fn record(&mut self, seconds: f64) {
        let Some(trial) = &mut self.trial else {
            if self.sharing {
                self.counts.0 += 1;
            } else {
                self.counts.1 += 1;
            }
            if self.recent.len() == TRIAL {
                self.recent.remove(0);
            }
            self.recent.push(seconds);
            self.wait = self.wait.saturating_sub(1);
            if self.wait == 0 && self.recent.len() == TRIAL {
                self.trial = Some(Vec::with_capacity(TRIAL));
            }
            return;
        };
        trial.push(seconds);
        let current = median(&self.recent);
        let hopeless = seconds > current * (1.0 + GIVE_UP);
        if trial.len() < TRIAL && !hopeless {
            return;
        }
        let other = median(trial);
        if !hopeless && other < current * (1.0 - MARGIN) {
            self.sharing = !self.sharing;
            self.recent = std::mem::take(trial);
            self.next_wait = FIRST_WAIT;
        } else {
            self.next_wait = (2 * self.next_wait).min(LONGEST_WAIT);
        }
        self.trial = None;
        self.wait = self.next_wait;
    }

    /// Steps run sharing the work and alone since the step was compiled, trials left out.
    pub fn counts(&self) -> (usize, usize) {
        self.counts
    }
}

fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` steps whose time depends on the mode; returns the modes chosen.
    fn drive(pace: &mut Pace, steps: usize, time: impl Fn(bool) -> f64) -> Vec<bool> {
        (0..steps)
            .map(|_| {
                let sharing = pace.sharing();
                pace.record(time(sharing));
                sharing
            })
            .collect()
    }

    #[test]
    fn a_busy_machine_moves_the_work_to_the_caller_and_a_quiet_one_back() {
        let mut pace = Pace::default();
        // Busy: shared steps take 5 ms, steps alone 3 ms.
        let busy = drive(&mut pace, 100, |sharing| if sharing { 5e-3 } else { 3e-3 });
        assert!(busy[..TRIAL].iter().all(|&s| s), "starts sharing");
        let alone = busy.iter().filter(|&&s| !s).count();
        assert!(alone >= 85, "{alone} of 100 steps alone");
        // Quiet again: shared steps take 2 ms. The next trial finds it and moves back.
        let quiet = drive(&mut pace, 300, |sharing| if sharing { 2e-3 } else { 3e-3 });
        let shared = quiet.iter().filter(|&&s| s).count();
        assert!(shared > 250, "{shared} of 300 steps shared");
        assert!(quiet[250..].iter().filter(|&&s| s).count() > 45);
    }

    #[test]
    fn trials_grow_rare_while_they_lose() {
        let mut pace = Pace::default();
        let modes = drive(&mut pace, 2000, |sharing| if sharing { 2e-3 } else { 3e-3 });
        let alone = modes.iter().filter(|&&s| !s).count();
        // Trials of three steps after waits of 16, 32, ..., 256, 256, ...
        assert!((TRIAL..=10 * TRIAL).contains(&alone), "{alone} steps alone");
        assert_eq!(pace.counts(), (2000 - alone, 0), "trials are not counted");
    }

    #[test]
    fn a_trial_far_slower_ends_at_its_first_step() {
        let mut pace = Pace::default();
        // Quiet: a step alone takes twice as long. Every trial is one step.
        let modes = drive(&mut pace, 500, |sharing| if sharing { 2e-3 } else { 4e-3 });
        let alone: Vec<usize> = (0..500).filter(|&i| !modes[i]).collect();
        assert!(!alone.is_empty());
        assert!(alone.windows(2).all(|w| w[1] > w[0] + 1), "{alone:?}");
        // Alone only 10% slower: the trial runs its three steps before it loses.
        let mut pace = Pace::default();
        let modes = drive(
            &mut pace,
            100,
            |sharing| if sharing { 2e-3 } else { 2.2e-3 },
        );
        let alone: Vec<usize> = (0..100).filter(|&i| !modes[i]).collect();
        assert_eq!(alone[..TRIAL], [alone[0], alone[0] + 1, alone[0] + 2]);
    }

    #[test]
    fn a_small_difference_keeps_the_mode() {
        let mut pace = Pace::default();
        let modes = drive(
            &mut pace,
            200,
            |sharing| if sharing { 2.0e-3 } else { 1.95e-3 },
        );
        assert!(modes.iter().filter(|&&s| s).count() > 180);
    }
}
