//! [`State::step`]: every HA decision, as a function of the state, one event and the time.
//!
//! After each event the core *reconciles*: is the active still fine (healthy, manageable,
//! canary passing)? If not it is released and new requests are held. Then it elects
//! (`election::elect`) and promotes break-before-make, stops strays and starts resyncs.
//! A promotion is a small sequence of its own, driven by the results of its effects:
//! `Locking → Stopping → (Resyncing) → Starting → routed`.

use tokio::time::Instant;

use super::state::{CANARY_COOLDOWN, Lost, PROMOTION_COOLDOWN, Promotion, RETRY_LATER, RETRY_PAUSE, Stage, State};
use super::{
    CommandError, Effect, Event, InstanceId, Notice, PromotionError, Reason, RecordPhase, StopFor, Sync, SyncOutcome,
};
use crate::backend::{CallError, FlowState};
use crate::control::election;
use crate::control::health::{Health, Report, Transition};

impl State {
    /// Applies one event at `now` and returns what to do, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Probe { id, report } => {
                if let Some(i) = self.index_of(&id) {
                    self.on_probe(i, report, now, &mut fx);
                }
            }
            Event::Steps(steps) => {
                for (id, s) in steps {
                    if let Some(i) = self.index_of(&id) {
                        self.members[i].sync = s;
                    }
                }
            }
            Event::Switchover { to, ticket } => self.on_switchover(to, ticket, now, &mut fx),
            Event::Tick => {}
            Event::ChangeLockTaken { got } => self.on_locked(got, now, &mut fx),
            Event::Stopped { id, purpose, result } => {
                if let Some(i) = self.index_of(&id) {
                    match purpose {
                        StopFor::Stray => self.on_stray_stopped(i, result, now, &mut fx),
                        StopFor::Promotion => self.on_promotion_stopped(i, result, now, &mut fx),
                    }
                }
            }
            Event::Started { id, result } if self.balanced() => self.on_balanced_started(&id, result, now, &mut fx),
            Event::Started { id, result } => {
                if self.promotion.as_ref().is_some_and(|p| self.members[p.target].spec.id == id) {
                    let result = result.map_err(|error| PromotionError::Start { id, error });
                    self.finish_promotion(result, now, &mut fx);
                }
            }
            Event::Synced { id, outcome } => self.on_synced(id, outcome, now, &mut fx),
            Event::Leadership(lead) => self.on_leadership(lead, &mut fx),
            Event::Record(record) => self.on_record(record, &mut fx),
            Event::Restart { id, ticket } => self.on_restart(id, ticket, &mut fx),
            Event::Restarted { id, result } => self.on_restarted(id, result, now, &mut fx),
            Event::RollingRestart { ticket } => self.on_rolling_restart(ticket, now, &mut fx),
        }
        self.deadman_due(now, &mut fx);
        self.reconcile(now, &mut fx);
        self.rolling_check(&mut fx);
        self.recover(now, &mut fx);
        fx
    }

    fn on_probe(&mut self, i: usize, r: Report, now: Instant, fx: &mut Vec<Effect>) {
        let grace = self.in_grace(i, now);
        let in_flight_for = self.settings.timeout;
        let m = &mut self.members[i];
        let id = m.spec.id.clone();
        m.last_probe = Some((r.at, r.latency));
        let transition = match r.state {
            Ok(state) => {
                // Flows read running by a probe that may have started before a confirmed stop
                // are not believed (the next probe tells); the instance still answered.
                let stale = state != FlowState::Stop && m.stopped_at.is_some_and(|t| now < t + in_flight_for);
                if !stale {
                    m.flow_state = Some(state);
                    m.start_readings = if state == FlowState::Stop { 0 } else { m.start_readings.saturating_add(1) };
                }
                m.last_error = None;
                m.tracker.observe(true)
            }
            Err(e) => {
                m.start_readings = 0;
                let t = match e {
                    CallError::Refused => m.tracker.force_down(),
                    // flowgate could not even try: no observation of the instance.
                    CallError::Local(_) => None,
                    CallError::Timeout(_) | CallError::Unanswered(_) if grace => None,
                    _ => m.tracker.observe(false),
                };
                m.last_error = Some(e);
                t
            }
        };
        match r.runtime_state {
            Some(Ok(enabled)) => {
                m.runtime_state = Some(enabled);
                if !enabled && !m.warned_unmanageable {
                    m.warned_unmanageable = true;
                    fx.push(Effect::Notice(Notice::Unmanageable { id: id.clone() }));
                }
            }
            Some(Err(e)) => m.last_error = Some(e),
            None => {}
        }
        if let Some(c) = r.canary {
            m.canary_checked = true;
            match c {
                Ok(()) => m.canary_fails = 0,
                Err(_) if grace => {}
                Err(error) => {
                    m.canary_fails += 1;
                    if m.canary_fails == 1 {
                        fx.push(Effect::Notice(Notice::CanaryFailing { id: id.clone(), error }));
                    }
                }
            }
        }
        match transition {
            Some(Transition::BecameUp) => {
                m.up_since = Some(now);
                m.recovery.down_since = None;
                m.recovery.gave_up = false;
                // Whatever happened while it was away, check its flows again.
                if m.sync == Sync::InStep {
                    m.sync = Sync::Unknown;
                }
                fx.push(Effect::Recheck(id.clone()));
                fx.push(Effect::Notice(Notice::Up { id, flow_state: m.flow_state }));
            }
            Some(Transition::BecameDown) => {
                m.downs.retain(|&t| now.saturating_duration_since(t) < super::state::FLAP_WINDOW);
                if m.recovery.job.is_none() {
                    // A restart flowgate ordered is no sign of flapping.
                    m.downs.push(now);
                }
                m.recovery.down_since.get_or_insert(now);
                if m.flapping(now) && m.downs.len() == super::state::FLAP_DOWNS {
                    fx.push(Effect::Notice(Notice::Flapping { id: id.clone() }));
                }
                m.up_since = None;
                m.flow_state = None;
                m.runtime_state = None;
                m.warned_unmanageable = false;
                m.canary_fails = 0;
                fx.push(Effect::Notice(Notice::Down { id: id.clone(), error: m.last_error.clone() }));
                self.suspect(&id, fx);
            }
            None => {}
        }
    }

    fn on_switchover(&mut self, to: Option<InstanceId>, ticket: u64, now: Instant, fx: &mut Vec<Effect>) {
        let mut reply = |result| fx.push(Effect::Reply { ticket, result });
        if self.following() {
            return reply(Err(CommandError::NotController));
        }
        if self.balanced() {
            return reply(Err(CommandError::Balanced));
        }
        if self.rolling.is_some() {
            return reply(Err(CommandError::Rolling));
        }
        if self.promotion.is_some() {
            return reply(Err(CommandError::Busy));
        }
        let target = match to {
            Some(id) => match self.index_of(&id) {
                None => {
                    let known: Vec<_> = self.members.iter().map(|m| m.spec.id.to_string()).collect();
                    return reply(Err(CommandError::Unknown { id, known: known.join(", ") }));
                }
                Some(i) if !self.members[i].eligible() => {
                    let m = &self.members[i];
                    let why = m.last_error.as_ref().map_or_else(|| m.health().as_str().to_string(), |e| e.to_string());
                    return reply(Err(CommandError::NotEligible { id, why }));
                }
                Some(i) => i,
            },
            None => {
                let mut cands = self.candidates(now);
                if let Some(a) = self.active {
                    cands[a].eligible = false;
                }
                for c in &mut cands {
                    c.running = false;
                }
                match election::elect(None, &cands, &self.policy(), now) {
                    Some(i) => i,
                    None => return reply(Err(CommandError::NoStandby)),
                }
            }
        };
        if Some(target) == self.active {
            return reply(Ok(format!("{} is already active", self.members[target].spec.id)));
        }
        self.begin_promotion(target, Reason::Switchover, now, Some(ticket), fx);
    }

    fn on_stray_stopped(&mut self, i: usize, result: Result<(), CallError>, now: Instant, fx: &mut Vec<Effect>) {
        let m = &mut self.members[i];
        m.stop_in_flight = false;
        let id = m.spec.id.clone();
        match result {
            Ok(()) => {
                let was = m.flow_state.unwrap_or(FlowState::Start);
                m.flow_state = Some(FlowState::Stop);
                m.start_readings = 0;
                m.stopped_at = Some(now);
                fx.push(Effect::Notice(Notice::StrayStopped { id, was }));
            }
            Err(error) => {
                if error == CallError::RuntimeStateDisabled {
                    m.runtime_state = Some(false);
                }
                m.stop_retry_at = Some(now + RETRY_LATER);
                fx.push(Effect::Notice(Notice::StrayStopFailed { id, error }));
            }
        }
    }

    fn on_synced(&mut self, id: InstanceId, outcome: SyncOutcome, now: Instant, fx: &mut Vec<Effect>) {
        let Some(i) = self.index_of(&id) else { return };
        let for_promotion = self.promotion.as_ref().is_some_and(|p| p.target == i && p.stage == Stage::Resyncing);
        if for_promotion {
            let error = match outcome {
                SyncOutcome::Failed(why) => Some(why),
                _ => None,
            };
            fx.push(Effect::Notice(Notice::ResyncedBeforePromotion { id, error }));
            return self.start_target(now, fx);
        }
        let m = &mut self.members[i];
        m.sync_in_flight = false;
        match outcome {
            SyncOutcome::InStep => {}
            SyncOutcome::Resynced => fx.push(Effect::Notice(Notice::Resynced { id, result: Ok(()) })),
            SyncOutcome::Failed(why) => {
                m.sync_retry_at = Some(now + RETRY_LATER);
                fx.push(Effect::Notice(Notice::Resynced { id, result: Err(why) }));
            }
        }
    }

    fn reconcile(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.following() {
            return self.follow_record(fx);
        }
        if self.balanced() {
            return self.balance(now, fx);
        }
        if self.promotion.is_some() {
            return;
        }
        if let Some(a) = self.active {
            let m = &self.members[a];
            let others_eligible = self.members.iter().enumerate().any(|(i, o)| i != a && o.eligible());
            let reason = if m.health() != Health::Up {
                Some(Reason::of_failure(m.last_error.as_ref()))
            } else if m.runtime_state == Some(false) {
                Some(Reason::Unmanageable)
            } else if m.canary_fails >= self.settings.fall && others_eligible {
                Some(Reason::Canary)
            } else {
                None
            };
            if let Some(reason) = reason {
                let failed = m.health() != Health::Up;
                if reason == Reason::Canary {
                    self.members[a].cooldown_until = Some(now + CANARY_COOLDOWN);
                }
                self.lose_active(reason, failed, now, fx);
            }
        }
        // Before the first election: every instance answered, and none that reads "start" has
        // read it only once (it may be booting stopped).
        let undecided = self.members.iter().any(|m| m.health() == Health::Unknown || m.maybe_running());
        let starting = !self.elected_once && self.active.is_none() && undecided && now < self.startup_until;
        let retrying = self.retry_at.is_some_and(|t| now < t);
        if !starting && !retrying {
            let cands = self.candidates(now);
            match election::elect(self.active, &cands, &self.policy(), now) {
                Some(t) if Some(t) != self.active => {
                    let reason = match (&self.lost, self.active) {
                        (_, Some(_)) => Reason::Failback,
                        (Some(l), None) => l.reason,
                        (None, None) => Reason::Initial,
                    };
                    return self.begin_promotion(t, reason, now, None, fx);
                }
                None if !self.warned_no_candidate => {
                    self.warned_no_candidate = true;
                    fx.push(Effect::Notice(Notice::NoCandidate));
                }
                _ => {}
            }
        }
        if !starting {
            self.stop_strays(now, fx);
            self.start_syncs(now, fx);
        }
    }

    /// A non-active instance whose last probe answered with flows started is stopped at once,
    /// at its first answer: a crashed active that rebooted with its saved "start" state must
    /// not wait for `rise` good probes before it is stopped. Stopping a non-active instance is
    /// always safe; `rise` still governs promotion and routing.
    fn stop_strays(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let (timeout, epoch) = (self.settings.stop_timeout, self.epoch());
        for (i, m) in self.members.iter_mut().enumerate() {
            let running = matches!(m.flow_state, Some(FlowState::Start | FlowState::Safe));
            let answered = m.last_error.is_none() && m.last_probe.is_some();
            if Some(i) == self.active || !answered || !running || m.stop_in_flight {
                continue;
            }
            if m.stop_retry_at.is_some_and(|t| now < t) || m.runtime_state == Some(false) {
                continue; // an instance without runtimeState cannot be stopped; reported when seen
            }
            m.stop_in_flight = true;
            fx.push(Effect::StopFlows { id: m.spec.id.clone(), timeout, purpose: StopFor::Stray, drain: false, epoch });
        }
    }

    /// Checks (and resyncs) every healthy instance whose step is not known to be right.
    fn start_syncs(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        self.start_syncs_from(self.active, now, fx)
    }

    /// The same, from the flows of `source` (the active, or an instance in rotation).
    pub(super) fn start_syncs_from(&mut self, source: Option<usize>, now: Instant, fx: &mut Vec<Effect>) {
        let Some(a) = source else { return };
        let source = self.members[a].spec.id.clone();
        for m in &mut self.members {
            if m.sync == Sync::InStep || m.sync_in_flight || m.health() != Health::Up {
                continue;
            }
            if m.sync_retry_at.is_some_and(|t| now < t) {
                continue;
            }
            m.sync_in_flight = true;
            fx.push(Effect::Resync { id: m.spec.id.clone(), source: Some(source.clone()), locked: false });
        }
    }

    fn lose_active(&mut self, reason: Reason, failed: bool, now: Instant, fx: &mut Vec<Effect>) {
        let Some(a) = self.active.take() else { return };
        self.members[a].active_until = Some(now);
        let id = self.members[a].spec.id.clone();
        self.promoted_at = None;
        self.lost = Some(Lost { at: now, from: Some(id.clone()), reason });
        fx.push(Effect::Release { id: id.clone(), failed });
        self.publish(None, RecordPhase::Promoting, fx);
        fx.push(Effect::Route(None));
        fx.push(Effect::Notice(Notice::ActiveLost { id, reason }));
    }

    pub(super) fn begin_promotion(
        &mut self,
        target: usize,
        reason: Reason,
        now: Instant,
        ticket: Option<u64>,
        fx: &mut Vec<Effect>,
    ) {
        let drain = self.active;
        if self.active.is_some() {
            // Planned move (switchover, failback): hold new traffic; in-flight requests finish.
            self.lose_active(reason, false, now, fx);
        }
        let s = &self.settings;
        let others: Vec<(usize, std::time::Duration)> = self
            .members
            .iter()
            .enumerate()
            .filter(|&(i, m)| i != target && m.health() == Health::Up)
            // A stopped standby answers at once; a running instance may need nodeCloseTimeout.
            .map(|(i, m)| (i, if m.flow_state == Some(FlowState::Stop) { s.timeout } else { s.stop_timeout }))
            .collect();
        let known_stopped =
            others.iter().map(|&(i, _)| i).filter(|&i| self.members[i].flow_state == Some(FlowState::Stop)).collect();
        let id = self.members[target].spec.id.clone();
        fx.push(Effect::Notice(Notice::Promoting { id, reason, stopping: others.len() }));
        // Deploys and resyncs never interleave with a promotion: the current holder of the
        // change lock is fenced (its outstanding calls are abandoned) and the lock taken.
        fx.push(Effect::TakeChangeLock);
        self.promotion = Some(Promotion {
            target,
            reason,
            started: now,
            ticket,
            stage: Stage::Locking,
            others,
            known_stopped,
            waiting: Vec::new(),
            stopped: Vec::new(),
            blocker: None,
            drain,
            unanswered: Vec::new(),
            wait_until: None,
        });
    }

    fn on_locked(&mut self, got: bool, now: Instant, fx: &mut Vec<Effect>) {
        let epoch = self.epoch();
        let Some(p) = self.promotion.as_mut().filter(|p| p.stage == Stage::Locking) else { return };
        if !got {
            fx.push(Effect::Notice(Notice::LockBusy));
        }
        p.stage = Stage::Stopping;
        p.waiting = p.others.iter().map(|(i, _)| *i).collect();
        for &(i, timeout) in &p.others {
            let id = self.members[i].spec.id.clone();
            let drain = p.drain == Some(i);
            fx.push(Effect::StopFlows { id, timeout, purpose: StopFor::Promotion, drain, epoch });
        }
        if p.waiting.is_empty() {
            self.after_stops(now, fx);
        }
    }

    fn on_promotion_stopped(&mut self, i: usize, result: Result<(), CallError>, now: Instant, fx: &mut Vec<Effect>) {
        let Some(p) = self.promotion.as_mut().filter(|p| p.stage == Stage::Stopping) else { return };
        let Some(pos) = p.waiting.iter().position(|&w| w == i) else { return };
        p.waiting.swap_remove(pos);
        let id = self.members[i].spec.id.clone();
        match result {
            Ok(()) => p.stopped.push(i),
            Err(
                CallError::Refused
                | CallError::Connect(_)
                | CallError::Reset(_)
                | CallError::Timeout(_)
                | CallError::Unanswered(_)
                | CallError::Transport(_),
            ) => {
                p.unanswered.push(i);
                fx.push(Effect::Notice(Notice::StopUnanswered { id }))
            }
            // It was known to be stopped: whatever it answered, it runs nothing.
            Err(_) if p.known_stopped.contains(&i) => {}
            // Refused, or not sent at all (Local: flowgate out of descriptors, the instance
            // most likely still running): nothing else may start.
            Err(error) => p.blocker = Some(PromotionError::StopRefused { id, error }),
        }
        if p.waiting.is_empty() {
            self.after_stops(now, fx);
        }
    }

    /// Every reachable other instance answered its stop: start the target (after a resync
    /// when only out-of-step candidates were eligible), or give up on a blocker.
    fn after_stops(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(p) = self.promotion.as_mut() else { return };
        for &i in &p.stopped {
            self.members[i].flow_state = Some(FlowState::Stop);
            self.members[i].start_readings = 0;
        }
        if let Some(b) = p.blocker.take() {
            return self.finish_promotion(Err(b), now, fx);
        }
        if self.deadman_wait(now, fx) {
            return;
        }
        self.after_fencing(now, fx);
    }

    /// Every other instance is stopped or fenced: start the target (after a resync when only
    /// out-of-step candidates were eligible).
    pub(super) fn after_fencing(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(p) = self.promotion.as_mut() else { return };
        let target = p.target;
        if self.members[target].sync == Sync::OutOfStep {
            p.stage = Stage::Resyncing;
            fx.push(Effect::Resync { id: self.members[target].spec.id.clone(), source: None, locked: true });
        } else {
            self.start_target(now, fx);
        }
    }

    /// Starts the target's flows, unless it went down meanwhile: a start that cannot be
    /// confirmed might still run flows later, beside whoever is promoted next.
    fn start_target(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(p) = self.promotion.as_mut() else { return };
        let m = &self.members[p.target];
        if m.health() != Health::Up {
            let why = PromotionError::TargetDown(m.spec.id.clone());
            return self.finish_promotion(Err(why), now, fx);
        }
        p.stage = Stage::Starting;
        let epoch = self.epoch();
        fx.push(Effect::StartFlows { id: m.spec.id.clone(), timeout: self.settings.start_timeout, epoch });
    }

    fn finish_promotion(&mut self, result: Result<(), PromotionError>, now: Instant, fx: &mut Vec<Effect>) {
        let Some(p) = self.promotion.take() else { return };
        fx.push(Effect::ReleaseChangeLock);
        let to = self.members[p.target].spec.id.clone();
        let lost = self.lost.take();
        let (from, since) = match lost.clone() {
            Some(l) => (l.from, l.at),
            None => (None, p.started),
        };
        let elapsed = now.saturating_duration_since(since);
        match &result {
            Ok(()) => {
                self.active = Some(p.target);
                self.promoted_at = Some(now);
                self.elected_once = true;
                self.warned_no_candidate = false;
                let m = &mut self.members[p.target];
                m.flow_state = Some(FlowState::Start);
                m.canary_fails = 0;
                // Every replica may route there now: its flows are confirmed started.
                self.publish(Some(p.target), RecordPhase::Serving, fx);
                fx.push(Effect::Route(Some(to.clone())));
                if let Some(ticket) = p.ticket {
                    fx.push(Effect::Reply { ticket, result: Ok(format!("{to} is active")) });
                }
            }
            Err(e) => {
                self.lost = lost.or(Some(Lost { at: since, from: None, reason: p.reason }));
                self.members[p.target].cooldown_until = Some(now + PROMOTION_COOLDOWN);
                self.retry_at = Some(now + RETRY_PAUSE);
                if let Some(ticket) = p.ticket {
                    fx.push(Effect::Reply { ticket, result: Err(e.clone().into()) });
                }
            }
        }
        let ok = result.is_ok();
        fx.push(Effect::Notice(Notice::Promotion { from, to, reason: p.reason, elapsed, result }));
        self.rolling_promoted(ok, fx);
    }
}
