//! Recovery: a failed instance is restarted with its configured command, so a spare exists
//! again after a failover.
//!
//! The rules (pure, like the rest of the core):
//! - An instance that is down and not active is restarted once it has been down for
//!   `hung_for` (its probes time out: the process is alive but its event loop is blocked) or
//!   `down_for` (refused, reset: crashed and not brought back by anything else). The active
//!   is released the moment it is down, so a hung instance is fenced (no traffic, not
//!   active) before it is restarted; nothing is restarted while a promotion runs.
//! - A restart is one *job*: the command runs (the instance is not eligible meanwhile), then
//!   the instance must be back (up, flows stopped, in step; or promoted) within
//!   `start_timeout`. What it knew before is forgotten when the command ends, so "back" is
//!   judged on fresh probes only.
//! - Crash-loop protection: at most `max_restarts` automatic restarts within `window`, each
//!   after a pause (`backoff`, doubled per restart in the window). When the next one would
//!   pass the limit the instance is left down, shown as such, until an operator restarts it
//!   or it comes back by itself.
//! - Operator restarts (`POST /restart`) and rolling restarts use the same jobs, and reset
//!   the count.

use std::time::Duration;

use tokio::time::Instant;

use super::{CommandError, Effect, InstanceId, Notice, Sync};
use crate::backend::{CallError, FlowState};
use crate::control::health::Health;

/// Why an instance is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// Its probes timed out for `hung_for`.
    Hang,
    /// It refused or reset connections for `down_for`.
    Crash,
    Operator,
    Rolling,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Hang => "hang",
            RestartReason::Crash => "crash",
            RestartReason::Operator => "operator",
            RestartReason::Rolling => "rolling",
        }
    }

    fn automatic(self) -> bool {
        matches!(self, RestartReason::Hang | RestartReason::Crash)
    }
}

/// A restart in progress.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub reason: RestartReason,
    pub ticket: Option<u64>,
    /// Set once the command succeeded: the instance must be back by then.
    pub back_by: Option<Instant>,
}

/// What the core knows about restarting one instance.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub(super) job: Option<Job>,
    /// Automatic restarts within the window, oldest first.
    pub(super) restarts: Vec<Instant>,
    /// The limit was reached: left down until an operator restarts it or it comes back.
    pub gave_up: bool,
    /// When it went down (cleared when it is up).
    pub(super) down_since: Option<Instant>,
    /// Every restart so far, and how the last one ended.
    pub total: u64,
    pub last: Option<(RestartReason, Result<(), String>)>,
}

impl Recovery {
    /// The restart command is running: the old process is going, the new not yet there.
    pub fn restarting(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.back_by.is_none())
    }

    /// What `/status` shows: "restarting", "waiting" (for it to be back), "gave_up" or none.
    pub fn state(&self) -> Option<&'static str> {
        match &self.job {
            Some(j) if j.back_by.is_none() => Some("restarting"),
            Some(_) => Some("waiting"),
            None if self.gave_up => Some("gave_up"),
            None => None,
        }
    }

    /// Automatic restarts within the window before `now`.
    pub fn recent(&self, window: Duration, now: Instant) -> usize {
        self.restarts.iter().filter(|&&t| now.saturating_duration_since(t) < window).count()
    }

    /// A job in progress must be carried over by a reload (the reply, or the command's result,
    /// would be lost).
    pub(super) fn pins_driver(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.back_by.is_none() || j.ticket.is_some())
    }
}

impl super::State {
    /// When the automatic restart of `i` is due and why, if it is one to restart at all.
    fn restart_due(&self, i: usize) -> Option<(Instant, RestartReason)> {
        let m = &self.members[i];
        let s = &self.settings.recovery;
        let r = &m.recovery;
        if !s.automatic || !m.spec.restartable || r.job.is_some() || r.gave_up || Some(i) == self.active {
            return None;
        }
        if m.health() != Health::Down {
            return None;
        }
        let hung = matches!(m.last_error, Some(CallError::Timeout(_) | CallError::Unanswered(_)));
        let (bound, reason) = if hung { (s.hung_for, RestartReason::Hang) } else { (s.down_for, RestartReason::Crash) };
        let mut due = r.down_since? + bound;
        if let Some(&last) = r.restarts.last() {
            let n = r.restarts.len().saturating_sub(1).min(16) as u32;
            due = due.max(last + s.backoff.saturating_mul(1 << n));
        }
        Some((due, reason))
    }

    /// When the core must look at `i`'s recovery again.
    pub(super) fn recovery_wake(&self, i: usize) -> Option<Instant> {
        match &self.members[i].recovery.job {
            Some(j) => j.back_by,
            None if self.following() || self.promotion.is_some() => None,
            None => self.restart_due(i).map(|(t, _)| t),
        }
    }

    /// Back from a restart: up with its flows stopped and in step, or promoted meanwhile.
    fn back(&self, i: usize) -> bool {
        let m = &self.members[i];
        m.health() == Health::Up
            && (self.active == Some(i)
                || self.rotation.contains(&i)
                || (m.flow_state == Some(FlowState::Stop) && m.sync == Sync::InStep))
    }

    /// Ends restarts that are back or late, and starts the automatic ones that are due. Runs
    /// after every event, on the controller (or alone).
    pub(super) fn recover(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        for i in 0..self.members.len() {
            let Some(back_by) = self.members[i].recovery.job.as_ref().and_then(|j| j.back_by) else { continue };
            if self.back(i) {
                self.finish_job(i, Ok(()), now, fx);
            } else if now >= back_by {
                let within = self.settings.recovery.start_timeout;
                self.finish_job(i, Err(format!("not up, stopped and in step within {within:?}")), now, fx);
            }
        }
        if self.following() || self.promotion.is_some() {
            return;
        }
        for i in 0..self.members.len() {
            let Some((due, reason)) = self.restart_due(i) else { continue };
            if now < due {
                continue;
            }
            let s = &self.settings.recovery;
            let (window, max) = (s.window, s.max_restarts as usize);
            let r = &mut self.members[i].recovery;
            r.restarts.retain(|&t| now.saturating_duration_since(t) < window);
            if r.restarts.len() >= max {
                r.gave_up = true;
                let id = self.members[i].spec.id.clone();
                fx.push(Effect::Notice(Notice::RecoveryExhausted { id, restarts: max }));
                continue;
            }
            r.restarts.push(now);
            self.start_restart(i, reason, None, fx);
        }
    }

    pub(super) fn start_restart(&mut self, i: usize, reason: RestartReason, ticket: Option<u64>, fx: &mut Vec<Effect>) {
        let m = &mut self.members[i];
        m.recovery.job = Some(Job { reason, ticket, back_by: None });
        m.recovery.total += 1;
        let id = m.spec.id.clone();
        fx.push(Effect::Notice(Notice::Restarting { id: id.clone(), reason }));
        fx.push(Effect::Restart { id, reason });
    }

    /// The restart command ended. On success what was known of the old process is forgotten:
    /// it must rise again on fresh probes, and its flows are checked again.
    pub(super) fn on_restarted(
        &mut self,
        id: InstanceId,
        result: Result<(), String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.index_of(&id) else { return };
        if !self.members[i].recovery.restarting() {
            return;
        }
        if let Err(why) = result {
            return self.finish_job(i, Err(format!("the restart command failed: {why}")), now, fx);
        }
        let back_by = now + self.settings.recovery.start_timeout;
        let m = &mut self.members[i];
        if let Some(j) = m.recovery.job.as_mut() {
            j.back_by = Some(back_by);
        }
        if m.health() == Health::Up {
            // Not seen down (a quick restart between probes): it is a new process all the same.
            let _ = m.tracker.force_down();
        }
        m.flow_state = None;
        m.runtime_state = None;
        m.start_readings = 0;
        m.up_since = None;
        m.canary_fails = 0;
        m.recovery.down_since = Some(now);
        if m.sync == Sync::InStep {
            m.sync = Sync::Unknown;
        }
        fx.push(Effect::Recheck(id));
    }

    fn finish_job(&mut self, i: usize, result: Result<(), String>, now: Instant, fx: &mut Vec<Effect>) {
        let m = &mut self.members[i];
        let Some(job) = m.recovery.job.take() else { return };
        let id = m.spec.id.clone();
        m.recovery.last = Some((job.reason, result.clone()));
        if job.reason.automatic() && result.is_err() {
            // Counted from the failure: the next attempt waits for the bound and the backoff.
            m.recovery.down_since = Some(now);
        }
        fx.push(Effect::Notice(Notice::Restart { id: id.clone(), reason: job.reason, result: result.clone() }));
        if let Some(ticket) = job.ticket {
            let result = result
                .clone()
                .map(|()| format!("{id} restarted: up, flows stopped, in step"))
                .map_err(|why| CommandError::Restart { id: id.clone(), why });
            fx.push(Effect::Reply { ticket, result });
        }
        if job.reason == RestartReason::Rolling {
            self.rolling_step_done(i, result, now, fx);
        }
    }

    /// Operator: restart `id` now (never the active), resetting its crash-loop count.
    pub(super) fn on_restart(&mut self, id: InstanceId, ticket: u64, fx: &mut Vec<Effect>) {
        let refuse = |e: CommandError, fx: &mut Vec<Effect>| fx.push(Effect::Reply { ticket, result: Err(e) });
        if self.following() {
            return refuse(CommandError::NotController, fx);
        }
        let Some(i) = self.index_of(&id) else {
            let known: Vec<_> = self.members.iter().map(|m| m.spec.id.to_string()).collect();
            return refuse(CommandError::Unknown { id, known: known.join(", ") }, fx);
        };
        let m = &self.members[i];
        if !m.spec.restartable {
            return refuse(CommandError::NoRestartCommand(id), fx);
        }
        if self.active == Some(i) {
            return refuse(CommandError::IsActive(id), fx);
        }
        if self.rotation == [i] {
            return refuse(CommandError::LastInRotation(id), fx);
        }
        if m.recovery.job.is_some() {
            return refuse(CommandError::Restarting(id), fx);
        }
        if self.rolling.is_some() {
            return refuse(CommandError::Rolling, fx);
        }
        if self.promotion.is_some() {
            return refuse(CommandError::Busy, fx);
        }
        let r = &mut self.members[i].recovery;
        r.gave_up = false;
        r.restarts.clear();
        self.start_restart(i, RestartReason::Operator, Some(ticket), fx);
    }
}
