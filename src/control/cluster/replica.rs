//! The rules for several flowgate replicas sharing one set of instances.
//!
//! One replica is the *controller* (it holds the leadership in the store, with an epoch that
//! only grows); it alone changes flow state, starts resyncs and writes the *active record*.
//! Every other replica is a *follower*: it probes (for its own view and to report failures
//! at once) and routes by the record, never by its own election.
//!
//! - The controller writes the record `Promoting` when it loses the active, and `Serving` only
//!   after the new active's flows are confirmed started, before it routes there itself: no
//!   replica routes to an instance whose flows are not running.
//! - A new controller keeps the active the record names (no failover on a change of
//!   controller) and writes the record again under its own epoch.
//! - A controller that loses the leadership stops at once: a promotion in flight is abandoned
//!   (no further stop or start is sent for it) and it routes by the record from then on.
//! - A follower that sees the recorded active down stops routing to it (requests are held)
//!   and tells the controller, which probes at once.

use super::state::State;
use super::{CommandError, Effect, InstanceId, Mode, Notice, Record, RecordPhase};
use crate::control::health::Health;

impl State {
    /// The epoch flow-state commands carry: this replica's, while it is the controller.
    pub(super) fn epoch(&self) -> Option<u64> {
        match self.mode {
            Mode::Controller { epoch } => Some(epoch),
            _ => None,
        }
    }

    pub(super) fn following(&self) -> bool {
        self.mode == Mode::Follower
    }

    pub(super) fn on_leadership(&mut self, lead: Option<u64>, fx: &mut Vec<Effect>) {
        match (lead, &self.mode) {
            (_, Mode::Alone) | (None, Mode::Follower) => {}
            (Some(epoch), _) => {
                if self.mode == (Mode::Controller { epoch }) {
                    return;
                }
                self.mode = Mode::Controller { epoch };
                fx.push(Effect::Notice(Notice::Leadership { epoch: Some(epoch) }));
                if self.record.is_some() {
                    // The cluster ran before: no start-up window for a new controller.
                    self.elected_once = true;
                }
                // What runs stays running: the record is written again under this epoch.
                if self.active.is_some() {
                    self.publish(self.active, RecordPhase::Serving, fx);
                }
            }
            (None, Mode::Controller { .. }) => {
                self.mode = Mode::Follower;
                fx.push(Effect::Notice(Notice::Leadership { epoch: None }));
                if let Some(p) = self.promotion.take() {
                    fx.push(Effect::ReleaseChangeLock);
                    if let Some(ticket) = p.ticket {
                        fx.push(Effect::Reply { ticket, result: Err(CommandError::NotController) });
                    }
                    let to = self.members[p.target].spec.id.clone();
                    fx.push(Effect::Notice(Notice::PromotionAbandoned { to }));
                }
                self.follow_record(fx);
            }
        }
    }

    pub(super) fn on_record(&mut self, record: Record, fx: &mut Vec<Effect>) {
        if self.record.as_ref().is_some_and(|r| r.epoch > record.epoch) {
            return; // an older controller's write seen late
        }
        self.record = Some(record);
        if self.following() {
            self.follow_record(fx);
        }
    }

    /// Follower: route as the record says, unless its active is down as seen from here.
    pub(super) fn follow_record(&mut self, fx: &mut Vec<Effect>) {
        let want = match &self.record {
            Some(Record { active: Some(id), phase: RecordPhase::Serving, .. }) => {
                self.index_of(id).filter(|&i| self.members[i].health() != Health::Down)
            }
            _ => None,
        };
        if want == self.active {
            return;
        }
        if let Some(a) = self.active.take() {
            let failed = self.members[a].health() == Health::Down;
            fx.push(Effect::Release { id: self.members[a].spec.id.clone(), failed });
        }
        self.active = want;
        self.elected_once |= want.is_some();
        fx.push(Effect::Route(want.map(|i| self.members[i].spec.id.clone())));
    }

    /// Follower: the recorded active went down here; the controller should look now.
    pub(super) fn suspect(&self, id: &InstanceId, fx: &mut Vec<Effect>) {
        let recorded = self.record.as_ref().and_then(|r| r.active.as_ref());
        if self.following() && recorded == Some(id) {
            fx.push(Effect::Suspect(id.clone()));
        }
    }

    /// Controller: the record for the state it just reached. It is also what this replica
    /// follows should it step down before seeing the store's copy.
    pub(super) fn publish(&mut self, active: Option<usize>, phase: RecordPhase, fx: &mut Vec<Effect>) {
        if let Some(epoch) = self.epoch() {
            let active = active.map(|i| self.members[i].spec.id.clone());
            let record = Record { active, epoch, phase };
            self.record = Some(record.clone());
            fx.push(Effect::Publish(record));
        }
    }
}
