//! Load-balanced mode (`mode: load-balanced`): every healthy, manageable, in-step instance
//! runs its flows and is in the *rotation*, the set traffic is spread over.
//!
//! The rules, as pure decisions of the core (the hot-spare election does not run):
//! - **Enter** only with flows confirmed started (a confirmed `start` call, or two probes in a
//!   row reading "start") and in step with the target flows. A stopped instance is started;
//!   an out-of-step one is resynced first (from an instance in rotation).
//! - **Leave at once** when it fails a probe (or a passive signal made one fail), becomes
//!   unmanageable, reads "stop" (someone stopped it), falls out of step, or is being
//!   restarted. Its in-flight requests are released when it failed, and its websockets close.
//! - **The first** instance enters by election (priority, running first), in step or not yet
//!   checked; the others are checked against it.

use tokio::time::Instant;

use super::state::{PROMOTION_COOLDOWN, State};
use super::{Effect, InstanceId, Notice, Sync};
use crate::backend::{CallError, FlowState};
use crate::control::election;
use crate::control::health::Health;

impl State {
    /// The instances in rotation, in the order they joined.
    pub fn rotation(&self) -> impl Iterator<Item = &InstanceId> {
        self.rotation.iter().map(|&i| &self.members[i].spec.id)
    }

    pub(super) fn balanced(&self) -> bool {
        self.settings.balanced
    }

    /// Why `i`, in rotation, must leave it now, if it must.
    fn must_leave(&self, i: usize) -> Option<&'static str> {
        let m = &self.members[i];
        if m.health() != Health::Up {
            Some("failed")
        } else if m.runtime_state == Some(false) {
            Some("unmanageable")
        } else if m.flow_state == Some(FlowState::Stop) {
            Some("flows stopped")
        } else if m.sync == Sync::OutOfStep {
            Some("out of step")
        } else if m.recovery.restarting() {
            Some("being restarted")
        } else {
            None
        }
    }

    /// Reconciles the rotation with what is known: who leaves, who is started, who enters.
    pub(super) fn balance(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let before = self.rotation.clone();
        for i in before.iter().copied() {
            if let Some(why) = self.must_leave(i) {
                self.rotation.retain(|&r| r != i);
                let m = &self.members[i];
                let failed = m.health() != Health::Up;
                fx.push(Effect::Release { id: m.spec.id.clone(), failed });
                fx.push(Effect::Notice(Notice::Rotation { id: m.spec.id.clone(), joined: false, why: why.into() }));
            }
        }
        let undecided = self.members.iter().any(|m| m.health() == Health::Unknown);
        if self.rotation.is_empty() && !self.elected_once && undecided && now < self.startup_until {
            return self.publish_rotation(&before, fx);
        }
        // The first one: by election, so the instance that runs flows (or the preferred one)
        // becomes the source the others are checked against. One at a time: while a start is on
        // its way, no other unchecked instance is started as a first one.
        let starting = self.members.iter().any(|m| m.start_in_flight);
        let seed = if self.rotation.is_empty() && !starting {
            election::elect(None, &self.candidates(now), &self.policy(), now)
        } else {
            None
        };
        let epoch = self.epoch();
        for i in 0..self.members.len() {
            let m = &self.members[i];
            let ready = m.sync == Sync::InStep || (Some(i) == seed && m.sync == Sync::Unknown);
            let joinable = ready && m.eligible() && !m.cooling(now) && !self.rotation.contains(&i);
            if !joinable || m.start_in_flight || m.flow_state.is_none() {
                continue;
            }
            if m.surely_running() {
                self.join(i, fx);
            } else if m.flow_state == Some(FlowState::Stop) {
                let m = &mut self.members[i];
                m.start_in_flight = true;
                let timeout = self.settings.start_timeout;
                fx.push(Effect::StartFlows { id: m.spec.id.clone(), timeout, epoch });
            }
        }
        self.publish_rotation(&before, fx);
        self.start_syncs_from(self.rotation.first().copied(), now, fx);
    }

    fn join(&mut self, i: usize, fx: &mut Vec<Effect>) {
        self.rotation.push(i);
        self.elected_once = true;
        self.warned_no_candidate = false;
        let id = self.members[i].spec.id.clone();
        fx.push(Effect::Notice(Notice::Rotation { id, joined: true, why: "flows started, in step".into() }));
    }

    fn publish_rotation(&mut self, before: &[usize], fx: &mut Vec<Effect>) {
        if self.rotation != before {
            fx.push(Effect::Rotation(self.rotation().cloned().collect()));
        }
        if self.rotation.is_empty() && self.elected_once && !self.warned_no_candidate {
            self.warned_no_candidate = true;
            fx.push(Effect::Notice(Notice::NoCandidate));
        }
    }

    /// Result of a start this mode asked for: it joins, or cools down before the next try.
    pub(super) fn on_balanced_started(
        &mut self,
        id: &InstanceId,
        result: Result<(), CallError>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.index_of(id) else { return };
        let m = &mut self.members[i];
        m.start_in_flight = false;
        match result {
            Ok(()) => {
                m.flow_state = Some(FlowState::Start);
                m.start_readings = 2;
                // Still worth routing to (it may have failed or fallen out of step meanwhile).
                if m.health() == Health::Up && m.sync != Sync::OutOfStep && !self.rotation.contains(&i) {
                    let before = self.rotation.clone();
                    self.join(i, fx);
                    self.publish_rotation(&before, fx);
                }
            }
            Err(error) => {
                if error == CallError::RuntimeStateDisabled {
                    m.runtime_state = Some(false);
                }
                m.cooldown_until = Some(now + PROMOTION_COOLDOWN);
                fx.push(Effect::Notice(Notice::Rotation {
                    id: id.clone(),
                    joined: false,
                    why: format!("its flows did not start: {error}"),
                }));
            }
        }
    }
}
