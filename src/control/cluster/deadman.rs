//! The dead-man switch, flowgate's side. With `failover.deadman` set, every instance runs the
//! switch of `contrib/node-red/flowgate-fence.js`: it stops its own flows when no heartbeat
//! has reached it for that long. Heartbeats go only to the routed active (with its probes and
//! the start of its flows), and only from flowgate alone or the controller of replicas. So
//! once an instance stopped being the active, it gets none: its switch fires at the latest
//! the bound after that, plus one probe timeout for a heartbeat still on its way.
//!
//! flowgate's side of the bargain: a promotion that could not confirm that every other
//! instance stopped (a stop unanswered, an instance unreachable but not known gone) starts
//! the target only once the switch of each such instance must have fired. An instance known
//! gone (its port refused) runs nothing and is not waited for.
//!
//! So a partition that hides a running active from flowgate (or from the controller) can no
//! longer end with two instances running flows: the cost is that such a failover, and a
//! hang's, takes the bound instead of a second.

use tokio::time::Instant;

use super::state::Stage;
use super::{Effect, Notice};
use crate::backend::CallError;
use crate::control::health::Health;

impl super::State {
    /// After the stops: enters `Waiting` when an instance that may run flows could not be
    /// stopped, until its switch must have fired. True when it waits.
    pub(super) fn deadman_wait(&mut self, now: Instant, fx: &mut Vec<Effect>) -> bool {
        let Some(bound) = self.settings.deadman else { return false };
        let Some(p) = self.promotion.as_ref() else { return false };
        let others: Vec<usize> = p.others.iter().map(|&(i, _)| i).collect();
        let unconfirmed: Vec<usize> = (0..self.members.len())
            .filter(|&i| i != p.target && !p.stopped.contains(&i))
            .filter(|&i| p.unanswered.contains(&i) || (!others.contains(&i) && self.members[i].health() != Health::Up))
            .filter(|&i| self.members[i].last_error != Some(CallError::Refused))
            .collect();
        // A heartbeat sent just before may still be on its way: one probe timeout more.
        let grace = bound + self.settings.timeout;
        let until = unconfirmed
            .iter()
            .map(|&i| self.members[i].active_until.unwrap_or(self.created) + grace)
            .max()
            .filter(|&t| t > now);
        let Some(until) = until else { return false };
        let ids = unconfirmed.iter().map(|&i| self.members[i].spec.id.clone()).collect();
        fx.push(Effect::Notice(Notice::AwaitingDeadman { ids, wait: until - now }));
        let p = self.promotion.as_mut().expect("checked above");
        p.stage = Stage::Waiting;
        p.wait_until = Some(until);
        true
    }

    /// The wait is over: go on with the promotion.
    pub(super) fn deadman_due(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let due = self
            .promotion
            .as_ref()
            .is_some_and(|p| p.stage == Stage::Waiting && p.wait_until.is_some_and(|t| now >= t));
        if due {
            if let Some(p) = self.promotion.as_mut() {
                p.wait_until = None;
            }
            self.after_fencing(now, fx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{MS, Script, actions, id, notices, settings};
    use super::super::*;

    const S: Duration = Duration::from_secs(1);

    fn with_deadman() -> Script {
        let mut set = settings();
        set.deadman = Some(3 * S);
        let mut s = Script::with(&[("a", 200), ("b", 100)], set);
        s.up("a", FlowState::Stop);
        s.up("b", FlowState::Stop);
        s.locked();
        s.stopped("b", Ok(()));
        s.started("a");
        s.all_in_step();
        s.advance(3 * S); // past the promotion's grace
        s
    }

    #[test]
    fn an_unreachable_active_is_replaced_only_once_its_switch_must_have_fired() {
        let mut s = with_deadman();
        s.probe("a", Err(CallError::Timeout(400 * MS)));
        let fx = s.probe("a", Err(CallError::Timeout(400 * MS)));
        assert_eq!(actions(&fx), ["release a failed", "route -", "lock"]);
        let released = s.now;
        let fx = s.locked();
        assert!(actions(&fx).is_empty(), "b is not started while a may still run: {fx:?}");
        assert!(notices(&fx).iter().any(|n| matches!(n, Notice::AwaitingDeadman { ids, .. } if ids == &[id("a")])));
        // No heartbeat for a since it was released; one may have been on its way (timeout).
        assert_eq!(s.core.next_wake(s.now), Some(released + 3 * S + 400 * MS));
        assert!(actions(&s.advance(3300 * MS)).is_empty(), "still inside the bound");
        assert_eq!(actions(&s.advance(100 * MS)), ["start b"]);
    }

    #[test]
    fn a_crashed_active_is_replaced_at_once() {
        let mut s = with_deadman();
        s.probe("a", Err(CallError::Refused));
        assert_eq!(actions(&s.locked()), ["start b"], "a refused connections: nothing runs there");
    }

    #[test]
    fn a_stop_that_went_unanswered_is_waited_for_too() {
        let mut s = with_deadman();
        s.send(Event::Switchover { to: Some(id("b")), ticket: 1 });
        assert_eq!(actions(&s.locked()), ["stop a"]);
        let fx = s.stopped("a", Err(CallError::Timeout(15 * S)));
        assert!(!actions(&fx).contains(&"start b".to_string()), "{fx:?}");
        let wake = s.core.next_wake(s.now).expect("a wake-up at the end of the bound");
        assert!(wake > s.now + 2 * S, "the switchover released a just now: {:?}", wake - s.now);
        s.now = wake;
        assert_eq!(actions(&s.send(Event::Tick)), ["start b"]);
    }

    #[test]
    fn without_the_switch_nothing_waits() {
        let mut s = Script::serving_a();
        s.advance(3 * S);
        s.probe("a", Err(CallError::Timeout(400 * MS)));
        s.probe("a", Err(CallError::Timeout(400 * MS)));
        assert_eq!(actions(&s.locked()), ["start b"]);
    }
}
