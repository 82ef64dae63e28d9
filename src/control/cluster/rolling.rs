//! Rolling restart: every instance restarted (an upgrade, a settings change) at the cost of
//! one switchover.
//!
//! Standbys first, one at a time, each back (up, flows stopped, in step) before the next;
//! then a switchover (the usual break-before-make promotion) to the best restarted standby;
//! then the old active, now a standby. It starts only when every instance has a restart
//! command and every standby is ready, and stops at the first step that fails, reporting
//! it: the active it found keeps serving until the switchover, and a failed switchover
//! leaves the election to put an instance that was serving back in charge.

use tokio::time::Instant;

use super::recovery::RestartReason;
use super::{CommandError, Effect, Notice, Reason};
use crate::backend::FlowState;
use crate::control::health::Health;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// A standby's restart is running.
    Standby(usize),
    /// The switchover to a restarted standby.
    Switching(usize),
    /// The old active's restart is running.
    OldActive,
}

#[derive(Debug, Clone)]
pub(super) struct Rolling {
    ticket: Option<u64>,
    old_active: usize,
    /// Standbys still to restart, in order.
    pending: Vec<usize>,
    restarted: Vec<usize>,
    stage: Stage,
}

/// A rolling restart as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RollingView {
    /// "running", "done" or "failed".
    pub state: &'static str,
    /// What it does now, or how it ended.
    pub detail: String,
    pub restarted: Vec<String>,
}

impl super::State {
    pub(super) fn on_rolling_restart(&mut self, ticket: u64, now: Instant, fx: &mut Vec<Effect>) {
        match self.rolling_refusal() {
            Some(e) => fx.push(Effect::Reply { ticket, result: Err(e) }),
            None => {
                let old_active = self.active.expect("checked: an active serves");
                let pending = (0..self.members.len()).filter(|&i| i != old_active).collect();
                self.rolling = Some(Rolling {
                    ticket: Some(ticket),
                    old_active,
                    pending,
                    restarted: Vec::new(),
                    stage: Stage::OldActive,
                });
                self.rolling_next(now, fx);
            }
        }
    }

    fn rolling_refusal(&self) -> Option<CommandError> {
        if self.following() {
            return Some(CommandError::NotController);
        }
        if self.rolling.is_some() {
            return Some(CommandError::Rolling);
        }
        if self.promotion.is_some() {
            return Some(CommandError::Busy);
        }
        let refuse = |why: String| Some(CommandError::RollingRefused(why));
        if self.balanced() {
            return refuse("not available in load-balanced mode yet: restart the instances one by one (POST /restart), each waits until it is back in rotation".into());
        }
        let Some(a) = self.active else { return refuse("no active instance is serving".into()) };
        if self.members.len() < 2 {
            return refuse("a rolling restart needs a standby to switch over to".into());
        }
        for (i, m) in self.members.iter().enumerate() {
            let id = &m.spec.id;
            if !m.spec.restartable {
                return refuse(format!("{id} has no restart command (backends[].restart.command)"));
            }
            if m.recovery.job.is_some() {
                return refuse(format!("{id} is being restarted"));
            }
            let ready = m.eligible() && m.flow_state == Some(FlowState::Stop) && m.sync == super::Sync::InStep;
            if i != a && !ready {
                let why = if m.health() != Health::Up { "down" } else { "not a stopped, in-step standby" };
                return refuse(format!("{id} is {why}: bring it back first"));
            }
        }
        None
    }

    /// Starts the next step, or the switchover once every standby is back.
    fn rolling_next(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(r) = self.rolling.as_mut() else { return };
        if let Some(i) = (!r.pending.is_empty()).then(|| r.pending.remove(0)) {
            r.stage = Stage::Standby(i);
            let id = self.members[i].spec.id.clone();
            fx.push(Effect::Notice(Notice::Rolling(Ok(format!("restarting standby {id}")))));
            return self.start_restart(i, RestartReason::Rolling, None, fx);
        }
        // Every standby is back: switch over to the best of them.
        let target = r
            .restarted
            .iter()
            .copied()
            .filter(|&i| self.members[i].eligible() && self.members[i].sync != super::Sync::OutOfStep)
            .max_by_key(|&i| (self.members[i].spec.priority, std::cmp::Reverse(i)));
        match target {
            Some(t) => {
                r.stage = Stage::Switching(t);
                let id = self.members[t].spec.id.clone();
                fx.push(Effect::Notice(Notice::Rolling(Ok(format!("switching over to {id}")))));
                self.begin_promotion(t, Reason::Switchover, now, None, fx);
            }
            None => self.rolling_end(Err("no restarted standby is eligible for the switchover".into()), fx),
        }
    }

    /// A restart of the rolling restart ended.
    pub(super) fn rolling_step_done(
        &mut self,
        i: usize,
        result: Result<(), String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(r) = self.rolling.as_mut() else { return };
        let id = self.members[i].spec.id.clone();
        match (r.stage, result) {
            (Stage::Standby(s), Ok(())) if s == i => {
                r.restarted.push(i);
                self.rolling_next(now, fx);
            }
            (Stage::OldActive, Ok(())) if i == r.old_active => {
                r.restarted.push(i);
                let names = self.rolling_names();
                let active = self.active().map_or_else(|| "none".to_string(), |a| a.to_string());
                self.rolling_end(Ok(format!("restarted {names}; {active} is active")), fx);
            }
            (Stage::Standby(s), Err(why)) if s == i => {
                let active = self.members[r.old_active].spec.id.clone();
                self.rolling_end(Err(format!("restarting {id}: {why}; {active} stays active")), fx);
            }
            (Stage::OldActive, Err(why)) if i == r.old_active => {
                let active = self.active().map_or_else(|| "none".to_string(), |a| a.to_string());
                self.rolling_end(Err(format!("restarting {id} (the old active): {why}; {active} is active")), fx);
            }
            _ => {}
        }
    }

    /// A promotion ended; the rolling restart's switchover goes on to the old active.
    pub(super) fn rolling_promoted(&mut self, ok: bool, fx: &mut Vec<Effect>) {
        let Some(r) = self.rolling.as_mut() else { return };
        let Stage::Switching(t) = r.stage else { return };
        if !ok || self.active != Some(t) {
            return self.rolling_end(Err("the switchover failed; the election picks the active".into()), fx);
        }
        let old = r.old_active;
        r.stage = Stage::OldActive;
        let id = self.members[old].spec.id.clone();
        fx.push(Effect::Notice(Notice::Rolling(Ok(format!("restarting the old active {id}")))));
        self.start_restart(old, RestartReason::Rolling, None, fx);
    }

    /// A failover while a standby is restarted changes the ground: stop there.
    pub(super) fn rolling_check(&mut self, fx: &mut Vec<Effect>) {
        let Some(r) = &self.rolling else { return };
        let lost = matches!(r.stage, Stage::Standby(_)) && self.active != Some(r.old_active);
        if self.following() {
            self.rolling_end(Err("this replica is no longer the controller".into()), fx);
        } else if lost {
            let id = self.members[r.old_active].spec.id.clone();
            self.rolling_end(Err(format!("the active {id} was lost meanwhile")), fx);
        }
    }

    fn rolling_names(&self) -> String {
        let r = self.rolling.as_ref().expect("a rolling restart");
        let names: Vec<_> = r.restarted.iter().map(|&i| self.members[i].spec.id.to_string()).collect();
        names.join(", ")
    }

    fn rolling_end(&mut self, result: Result<String, String>, fx: &mut Vec<Effect>) {
        let Some(r) = self.rolling.take() else { return };
        fx.push(Effect::Notice(Notice::Rolling(result.clone().map(|m| format!("done: {m}")))));
        if let Some(ticket) = r.ticket {
            fx.push(Effect::Reply { ticket, result: result.clone().map_err(CommandError::RollingFailed) });
        }
        let restarted = r.restarted.iter().map(|&i| self.members[i].spec.id.to_string()).collect();
        self.rolling_last = Some(match result {
            Ok(detail) => RollingView { state: "done", detail, restarted },
            Err(detail) => RollingView { state: "failed", detail, restarted },
        });
    }

    /// The rolling restart in progress, else how the last one ended.
    pub fn rolling_view(&self) -> Option<RollingView> {
        if let Some(r) = &self.rolling {
            let detail = match r.stage {
                Stage::Standby(i) => format!("restarting standby {}", self.members[i].spec.id),
                Stage::Switching(i) => format!("switching over to {}", self.members[i].spec.id),
                Stage::OldActive => format!("restarting the old active {}", self.members[r.old_active].spec.id),
            };
            let restarted = r.restarted.iter().map(|&i| self.members[i].spec.id.to_string()).collect();
            return Some(RollingView { state: "running", detail, restarted });
        }
        self.rolling_last.clone()
    }
}
