//! Which instance should be active: a pure, deterministic function.
//!
//! Invariants (checked exhaustively in the tests):
//! 1. The result is `None` exactly when no candidate is eligible, else an eligible candidate.
//! 2. An eligible current active is kept, unless failback is on and a higher-priority
//!    candidate has been healthy for `failback_delay`.
//! 3. Without an eligible current active: candidates cooling down after a failed promotion or
//!    canary come last; then out-of-step candidates (missed a deploy) come after in-step ones;
//!    among the rest, one already running flows is adopted first (a restarted flowgate keeps
//!    the roles it finds), then the highest priority, then file order.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub priority: i64,
    /// Healthy and manageable (runtimeState enabled, authorised).
    pub eligible: bool,
    /// Reports flows started.
    pub running: bool,
    /// Not known to be out of step with the target flows and credentials.
    pub in_step: bool,
    /// Recently failed a promotion or its canary: chosen only when nothing else is eligible.
    pub cooling: bool,
    /// Since when it has been continuously healthy.
    pub up_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub failback: bool,
    pub failback_delay: Duration,
}

pub fn elect(current: Option<usize>, cands: &[Candidate], policy: &Policy, now: Instant) -> Option<usize> {
    let rank = |i: usize| {
        let c = &cands[i];
        (!c.cooling, c.in_step, c.running, c.priority, std::cmp::Reverse(i))
    };
    if let Some(cur) = current.filter(|&i| cands.get(i).is_some_and(|c| c.eligible)) {
        if !policy.failback {
            return Some(cur);
        }
        let best = (0..cands.len())
            .filter(|&i| cands[i].eligible && !cands[i].cooling)
            .max_by_key(|&i| (cands[i].priority, std::cmp::Reverse(i)));
        return match best {
            Some(b)
                if cands[b].priority > cands[cur].priority
                    && cands[b].up_since.is_some_and(|t| now.duration_since(t) >= policy.failback_delay) =>
            {
                Some(b)
            }
            _ => Some(cur),
        };
    }
    (0..cands.len()).filter(|&i| cands[i].eligible).max_by_key(|&i| rank(i))
}

/// When failback to a better candidate will be due (for the supervisor's timer).
pub fn failback_due(current: Option<usize>, cands: &[Candidate], policy: &Policy) -> Option<Instant> {
    let cur = current?;
    if !policy.failback {
        return None;
    }
    cands
        .iter()
        .filter(|c| c.eligible && !c.cooling && c.priority > cands[cur].priority)
        .filter_map(|c| c.up_since)
        .map(|t| t + policy.failback_delay)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(priority: i64, eligible: bool, running: bool) -> Candidate {
        Candidate { priority, eligible, running, in_step: true, cooling: false, up_since: None }
    }

    const KEEP: Policy = Policy { failback: false, failback_delay: Duration::from_secs(60) };

    #[test]
    fn highest_priority_wins_when_there_is_no_active() {
        let now = Instant::now();
        let cands = [c(100, true, false), c(200, true, false), c(200, true, false)];
        assert_eq!(elect(None, &cands, &KEEP, now), Some(1), "ties go to file order");
    }

    #[test]
    fn keeps_the_active_when_a_preferred_instance_returns() {
        let now = Instant::now();
        let mut cands = [c(200, true, false), c(100, true, true)];
        cands[0].up_since = Some(now - Duration::from_secs(3600));
        assert_eq!(elect(Some(1), &cands, &KEEP, now), Some(1));
    }

    #[test]
    fn fails_back_only_after_the_delay() {
        let t0 = Instant::now();
        let policy = Policy { failback: true, failback_delay: Duration::from_secs(60) };
        let mut cands = [c(200, true, false), c(100, true, true)];
        cands[0].up_since = Some(t0);
        assert_eq!(elect(Some(1), &cands, &policy, t0 + Duration::from_secs(59)), Some(1));
        assert_eq!(failback_due(Some(1), &cands, &policy), Some(t0 + Duration::from_secs(60)));
        assert_eq!(elect(Some(1), &cands, &policy, t0 + Duration::from_secs(60)), Some(0));
    }

    #[test]
    fn adopts_an_instance_already_running_flows() {
        let now = Instant::now();
        let cands = [c(200, true, false), c(100, true, true)];
        assert_eq!(elect(None, &cands, &KEEP, now), Some(1));
    }

    #[test]
    fn a_cooling_instance_is_not_readopted_because_it_runs_flows() {
        let now = Instant::now();
        let mut cands = [c(200, true, true), c(100, true, false)];
        cands[0].cooling = true;
        assert_eq!(elect(None, &cands, &KEEP, now), Some(1));
    }

    #[test]
    fn an_out_of_step_candidate_is_chosen_only_without_an_in_step_one() {
        let now = Instant::now();
        let mut cands = [c(200, true, false), c(100, true, false)];
        cands[0].in_step = false;
        assert_eq!(elect(None, &cands, &KEEP, now), Some(1));
        cands[1].eligible = false;
        assert_eq!(elect(None, &cands, &KEEP, now), Some(0));
    }

    #[test]
    fn cooling_candidates_are_a_last_resort() {
        let now = Instant::now();
        let mut cands = [c(200, true, false), c(100, true, false)];
        cands[0].cooling = true;
        assert_eq!(elect(None, &cands, &KEEP, now), Some(1));
        cands[1].eligible = false;
        assert_eq!(elect(None, &cands, &KEEP, now), Some(0));
    }

    /// Every combination of three candidates (eligible, running, cooling, priority) and
    /// every current active, with and without failback.
    #[test]
    fn invariants_hold_for_every_small_cluster() {
        let now = Instant::now();
        let states: Vec<Candidate> = (0..32)
            .map(|b| Candidate {
                eligible: b & 1 != 0,
                running: b & 2 != 0,
                cooling: b & 4 != 0,
                priority: if b & 8 != 0 { 200 } else { 100 },
                in_step: b & 16 != 0,
                up_since: Some(now - Duration::from_secs(120)),
            })
            .collect();
        for a in &states {
            for b in &states {
                for d in &states {
                    let cands = [*a, *b, *d];
                    for current in [None, Some(0), Some(1), Some(2)] {
                        for failback in [false, true] {
                            let policy = Policy { failback, failback_delay: Duration::from_secs(60) };
                            let got = elect(current, &cands, &policy, now);
                            let any = cands.iter().any(|c| c.eligible);
                            assert_eq!(got.is_some(), any, "{cands:?} {current:?}");
                            if let Some(g) = got {
                                assert!(cands[g].eligible, "elected an ineligible candidate");
                                if current.is_none_or(|c| !cands[c].eligible) && !cands[g].cooling {
                                    let better = cands.iter().any(|c| c.eligible && !c.cooling && c.in_step);
                                    assert!(cands[g].in_step || !better, "out-of-step chosen over in-step");
                                }
                            }
                            if let Some(cur) = current.filter(|&i| cands[i].eligible) {
                                if !failback {
                                    assert_eq!(got, Some(cur), "active must be kept");
                                } else if got != Some(cur) {
                                    let g = got.unwrap();
                                    assert!(cands[g].priority > cands[cur].priority && !cands[g].cooling);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
