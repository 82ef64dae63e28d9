//! The supervisor: the one task that owns health, election and flow control.
//!
//! Inputs arrive on channels: probe reports (one prober per instance), operator commands,
//! and the results of flow-control tasks it spawned. After each input it reconciles:
//!
//! 1. Is the active instance still fine (healthy, manageable, canary passing)? If not, it is
//!    *lost*: traffic to it is fenced (in-flight requests are released, websockets closed) and
//!    new requests are held.
//! 2. Elect (`election::elect`). A new target is promoted **break-before-make**: flows are
//!    stopped on every other reachable instance and each stop is confirmed from the response
//!    body, then flows are started on the target and confirmed, and only then does traffic
//!    switch. One promotion at a time.
//! 3. Strays: a healthy non-active instance that reports flows started (for example a crashed
//!    active that rebooted with its persisted "start" state) is stopped at once and counted.
//!
//! Transitions are logged once each, never per probe.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::{AdminClient, Backend, BackendId, CallError, FlowState};
use crate::election::{self, Candidate, Policy};
use crate::health::{Health, Report, Tracker, Transition};
use crate::state::{Active, BackendStatus, FailoverRecord, Shared, Status, View};

/// How long a candidate whose promotion failed is passed over while others are eligible.
const PROMOTION_COOLDOWN: Duration = Duration::from_secs(5);
/// How long an instance whose canary failed is passed over while others are eligible.
const CANARY_COOLDOWN: Duration = Duration::from_secs(60);
/// Pause before the next election after a promotion failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause before checking an instance's flows again after a failed resync.
const SYNC_RETRY: Duration = Duration::from_secs(5);
const HISTORY: usize = 50;

/// Operator commands (admin API, reload).
pub enum Command {
    /// Planned move of the active role; `to: None` picks the best standby.
    Switchover { to: Option<BackendId>, reply: oneshot::Sender<Result<String, String>> },
    /// Config reload: hand the HA state over and stop, once no promotion is in flight. If the
    /// receiver is gone by then, keep supervising.
    Handover { reply: oneshot::Sender<Seed> },
}

/// HA state carried across a config reload, by instance identity (id, scheme, authority).
pub struct Seed {
    members: Vec<(String, String, Member)>,
    active: Option<(String, String, Arc<Active>)>,
    promoted_at: Option<Instant>,
    history: VecDeque<FailoverRecord>,
    elected_once: bool,
    lost: Option<(Instant, Option<String>, &'static str)>,
}

fn identity(b: &Backend) -> String {
    format!("{}://{}", b.scheme, b.authority)
}

enum Done {
    Stopped { index: usize, was: FlowState, result: Result<(), CallError> },
    Synced { index: usize, outcome: crate::deploy::SyncOutcome },
    Promoted(Promotion),
}

struct Promotion {
    target: usize,
    stopped: Vec<usize>,
    outcome: Result<(), String>,
}

#[derive(Default, Clone)]
struct Member {
    tracker: Option<Tracker>,
    flow_state: Option<FlowState>,
    runtime_state: Option<bool>,
    canary_fails: u32,
    canary_checked: bool,
    up_since: Option<Instant>,
    cooldown_until: Option<Instant>,
    stop_in_flight: bool,
    last_probe: Option<(SystemTime, Duration)>,
    last_error: Option<CallError>,
    warned_unmanageable: bool,
    sync_in_flight: bool,
    sync_retry_at: Option<Instant>,
    /// After a failed stray stop: not retried before this.
    stop_retry_at: Option<Instant>,
}

impl Member {
    fn health(&self) -> Health {
        self.tracker.as_ref().map_or(Health::Unknown, Tracker::health)
    }
    fn eligible(&self) -> bool {
        self.health() == Health::Up && self.runtime_state == Some(true) && self.flow_state.is_some()
    }
    fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|t| now < t)
    }
}

/// Why the active instance was lost, and when.
struct Lost {
    at: Instant,
    from: Option<usize>,
    reason: &'static str,
}

struct Pending {
    target: usize,
    reason: &'static str,
    started: Instant,
    reply: Option<oneshot::Sender<Result<String, String>>>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    client: AdminClient,
    members: Vec<Member>,
    active: Option<usize>,
    current: Option<Arc<Active>>,
    promoted_at: Option<Instant>,
    pending: Option<Pending>,
    lost: Option<Lost>,
    history: VecDeque<FailoverRecord>,
    startup_until: Instant,
    elected_once: bool,
    retry_at: Option<Instant>,
    warned_no_candidate: bool,
    generation: u64,
    reports: mpsc::Receiver<(usize, Report)>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    handover: Option<oneshot::Sender<Seed>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn loss_reason(err: Option<&CallError>) -> &'static str {
    match err {
        Some(CallError::Refused | CallError::Connect(_) | CallError::Reset(_)) => "crash",
        Some(CallError::Timeout(_)) => "hang",
        _ => "unhealthy",
    }
}

impl Supervisor {
    pub fn new(
        shared: Arc<Shared>,
        client: AdminClient,
        reports: mpsc::Receiver<(usize, Report)>,
        commands: mpsc::Receiver<Command>,
        seed: Option<Seed>,
    ) -> Self {
        let h = &shared.config.health;
        let members = (0..shared.backends.len())
            .map(|_| Member { tracker: Some(Tracker::new(h.rise, h.fall)), ..Member::default() })
            .collect();
        let startup_until = Instant::now() + h.interval * 2 + h.timeout;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let s = Supervisor {
            shared,
            client,
            members,
            active: None,
            current: None,
            promoted_at: None,
            pending: None,
            lost: None,
            history: VecDeque::new(),
            startup_until,
            elected_once: false,
            retry_at: None,
            warned_no_candidate: false,
            generation: 0,
            reports,
            commands,
            done_tx,
            done_rx,
            handover: None,
        };
        let mut s = s;
        if let Some(seed) = seed {
            s.adopt(seed);
        }
        s.publish_status();
        s
    }

    /// Takes over the state of the supervisor before a reload.
    fn adopt(&mut self, seed: Seed) {
        let backends = self.shared.backends.clone();
        for (i, b) in backends.iter().enumerate() {
            if let Some((_, _, m)) = seed.members.iter().find(|(id, at, _)| *id == b.id.as_str() && *at == identity(b))
            {
                let mut m = m.clone();
                m.sync_in_flight = false;
                m.stop_in_flight = false;
                let h = &self.shared.config.health;
                // Thresholds may have changed: keep the health, take the new rise/fall.
                let mut t = Tracker::new(h.rise, h.fall);
                match m.health() {
                    Health::Up => {
                        t.observe(true);
                    }
                    Health::Down => {
                        t.observe(false);
                    }
                    Health::Unknown => {}
                }
                m.tracker = Some(t);
                self.members[i] = m;
            }
        }
        self.history = seed.history;
        self.elected_once = seed.elected_once;
        self.promoted_at = seed.promoted_at;
        self.lost = seed.lost.map(|(at, from, reason)| Lost {
            at,
            from: from.and_then(|f| backends.iter().position(|b| b.id.as_str() == f)),
            reason,
        });
        if let Some((id, at, old)) = seed.active
            && let Some(i) = backends.iter().position(|b| b.id.as_str() == id && identity(b) == at)
        {
            // Same instance: keep its fencing signals, so open tunnels close on a later demotion.
            let active = Arc::new(Active {
                index: i,
                backend: backends[i].clone(),
                failed: old.failed.clone(),
                demoted: old.demoted.clone(),
            });
            self.active = Some(i);
            self.current = Some(active.clone());
            self.generation += 1;
            self.shared.view.store(Arc::new(View { generation: self.generation, active: Some(active) }));
            self.shared.generation.send_replace(self.generation);
        }
    }

    fn seed(&self) -> Seed {
        let b = &self.shared.backends;
        Seed {
            members: self
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| (b[i].id.to_string(), identity(&b[i]), m.clone()))
                .collect(),
            active: self.current.as_ref().map(|a| (a.backend.id.to_string(), identity(&a.backend), a.clone())),
            promoted_at: self.promoted_at,
            history: self.history.clone(),
            elected_once: self.elected_once,
            lost: self.lost.as_ref().map(|l| (l.at, l.from.map(|f| b[f].id.to_string()), l.reason)),
        }
    }

    /// Answers a pending handover once nothing is in flight. True when this supervisor ends.
    fn try_handover(&mut self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        match self.handover.take() {
            Some(reply) => reply.send(self.seed()).is_ok(),
            None => false,
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some((i, r)) = self.reports.recv() => self.on_report(i, r),
                Some(c) = self.commands.recv() => self.on_command(c),
                Some(d) = self.done_rx.recv() => self.on_done(d),
                _ = self.shared.sync_changed.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if self.try_handover() {
                info!("supervision handed over to the reloaded configuration");
                return;
            }
            self.reconcile();
            self.publish_status();
        }
        // flowgate's own exit leaves every instance as it is: the active keeps running flows.
        if let Some(p) = self.pending.take().and_then(|p| p.reply) {
            let _ = p.send(Err("flowgate is shutting down".into()));
        }
    }

    fn policy(&self) -> Policy {
        let f = &self.shared.config.failover;
        Policy { failback: f.failback, failback_delay: f.failback_delay }
    }

    fn candidates(&self, now: Instant) -> Vec<Candidate> {
        let sync = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        self.members
            .iter()
            .zip(&self.shared.backends)
            .enumerate()
            .map(|(i, (m, b))| Candidate {
                priority: b.priority,
                eligible: m.eligible(),
                running: m.flow_state == Some(FlowState::Start),
                in_step: !matches!(sync.steps[i], crate::sync::Step::OutOfStep(_)),
                cooling: m.cooling(now),
                up_since: m.up_since,
            })
            .collect()
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t.filter(|&t| t > now) {
                wake = wake.min(t);
            }
        };
        if !self.elected_once {
            consider(Some(self.startup_until));
        }
        consider(self.retry_at);
        consider(election::failback_due(self.active, &self.candidates(now), &self.policy()));
        for m in &self.members {
            consider(m.cooldown_until);
            consider(m.sync_retry_at);
            consider(m.stop_retry_at);
        }
        if let Some(p) = self.promoted_at {
            consider(Some(p + self.shared.config.health.promotion_grace));
        }
        wake
    }

    fn in_grace(&self, index: usize, now: Instant) -> bool {
        self.active == Some(index)
            && self.promoted_at.is_some_and(|t| now < t + self.shared.config.health.promotion_grace)
    }

    fn on_report(&mut self, i: usize, r: Report) {
        let now = Instant::now();
        let id = self.shared.backends[i].id.clone();
        let grace = self.in_grace(i, now);
        let metrics = &self.shared.metrics;
        metrics.probe_duration.with_label_values(&[id.as_str()]).observe(r.latency.as_secs_f64());
        let m = &mut self.members[i];
        m.last_probe = Some((r.at, r.latency));
        let tracker = m.tracker.as_mut().expect("tracker");
        let transition = match &r.state {
            Ok(state) => {
                m.flow_state = Some(*state);
                m.last_error = None;
                tracker.observe(true)
            }
            Err(e) => {
                metrics.probe_failures.with_label_values(&[id.as_str(), e.kind()]).inc();
                m.last_error = Some(e.clone());
                match e {
                    CallError::Refused => tracker.force_down(),
                    CallError::Timeout(_) if grace => None,
                    _ => tracker.observe(false),
                }
            }
        };
        match r.runtime_state {
            Some(Ok(enabled)) => {
                m.runtime_state = Some(enabled);
                if !enabled && !m.warned_unmanageable {
                    m.warned_unmanageable = true;
                    error!(backend = %id, "runtimeState is disabled, so flowgate cannot start or stop flows here and will never promote it; set `runtimeState: {{ enabled: true, ui: false }}` in its settings.js");
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
                Err(e) => {
                    m.canary_fails += 1;
                    if m.canary_fails == 1 {
                        warn!(backend = %id, error = %e, "canary failed on the active instance");
                    }
                }
            }
        }
        match transition {
            Some(Transition::BecameUp) => {
                m.up_since = Some(now);
                // Whatever happened while it was away, check its flows again.
                let mut sync = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
                if sync.in_step(i) {
                    sync.steps[i] = crate::sync::Step::Unknown;
                }
                info!(backend = %id, flow_state = ?m.flow_state, "instance is up");
            }
            Some(Transition::BecameDown) => {
                m.up_since = None;
                m.flow_state = None;
                m.runtime_state = None;
                m.warned_unmanageable = false;
                m.canary_fails = 0;
                let err = m.last_error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                warn!(backend = %id, error = %err, "instance is down");
            }
            None => {}
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let (to, reply) = match cmd {
            Command::Switchover { to, reply } => (to, reply),
            Command::Handover { reply } => {
                self.handover = Some(reply);
                return;
            }
        };
        if self.pending.is_some() {
            let _ = reply.send(Err("a promotion is already in progress; try again shortly".into()));
            return;
        }
        let now = Instant::now();
        let target = match to {
            Some(id) => match self.shared.backends.iter().position(|b| b.id == id) {
                None => {
                    let known: Vec<_> = self.shared.backends.iter().map(|b| b.id.to_string()).collect();
                    let _ = reply.send(Err(format!("no backend \"{id}\"; known: {}", known.join(", "))));
                    return;
                }
                Some(i) if !self.members[i].eligible() => {
                    let why = self.members[i]
                        .last_error
                        .as_ref()
                        .map_or_else(|| self.members[i].health().as_str().to_string(), |e| e.to_string());
                    let _ = reply.send(Err(format!("backend \"{id}\" is not eligible: {why}")));
                    return;
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
                    None => {
                        let _ = reply.send(Err("no eligible standby".into()));
                        return;
                    }
                }
            }
        };
        if Some(target) == self.active {
            let _ = reply.send(Ok(format!("{} is already active", self.shared.backends[target].id)));
            return;
        }
        self.begin_promotion(target, "switchover", now, Some(reply));
    }

    fn on_done(&mut self, d: Done) {
        let now = Instant::now();
        match d {
            Done::Stopped { index, was, result } => {
                let id = &self.shared.backends[index].id;
                let m = &mut self.members[index];
                m.stop_in_flight = false;
                match result {
                    Ok(()) => {
                        m.flow_state = Some(FlowState::Stop);
                        self.shared.metrics.stray_starts_stopped.with_label_values(&[id.as_str()]).inc();
                        warn!(backend = %id, was = was.as_str(), "stopped flows on a non-active instance (stray start)");
                    }
                    Err(e) => {
                        if e == CallError::RuntimeStateDisabled {
                            m.runtime_state = Some(false);
                        }
                        m.stop_retry_at = Some(now + SYNC_RETRY);
                        error!(backend = %id, error = %e, "could not stop flows on a non-active instance; retrying in 5 s");
                    }
                }
            }
            Done::Promoted(p) => self.on_promoted(p, now),
            Done::Synced { index, outcome } => {
                let id = self.shared.backends[index].id.clone();
                let m = &mut self.members[index];
                m.sync_in_flight = false;
                use crate::deploy::SyncOutcome;
                match outcome {
                    SyncOutcome::InStep => {}
                    SyncOutcome::Resynced => {
                        self.shared.metrics.resyncs.with_label_values(&[id.as_str(), "ok"]).inc();
                        info!(backend = %id, "instance brought back in step (flows and credentials)");
                    }
                    SyncOutcome::Failed(why) => {
                        m.sync_retry_at = Some(now + SYNC_RETRY);
                        self.shared.metrics.resyncs.with_label_values(&[id.as_str(), "failed"]).inc();
                        warn!(backend = %id, error = %why, "could not bring the instance in step; retrying");
                    }
                }
            }
        }
    }

    fn on_promoted(&mut self, p: Promotion, now: Instant) {
        let pending = self.pending.take().expect("a promotion was pending");
        for &i in &p.stopped {
            self.members[i].flow_state = Some(FlowState::Stop);
        }
        let target_id = self.shared.backends[p.target].id.clone();
        let lost = self.lost.take();
        let (from, since) = match &lost {
            Some(l) => (l.from, l.at),
            None => (None, pending.started),
        };
        let from_id = from.map(|f| self.shared.backends[f].id.to_string());
        let elapsed = now.duration_since(since);
        let mut record = FailoverRecord {
            at_unix_ms: unix_ms(SystemTime::now()),
            from: from_id.clone(),
            to: Some(target_id.to_string()),
            reason: pending.reason,
            duration_ms: elapsed.as_secs_f64() * 1e3,
            outcome: "ok",
            detail: None,
        };
        match p.outcome {
            Ok(()) => {
                self.active = Some(p.target);
                self.promoted_at = Some(now);
                self.elected_once = true;
                self.warned_no_candidate = false;
                let m = &mut self.members[p.target];
                m.flow_state = Some(FlowState::Start);
                m.canary_fails = 0;
                self.publish_view();
                if pending.reason != "initial" {
                    self.shared.metrics.failovers.with_label_values(&[pending.reason]).inc();
                    self.shared.metrics.failover_duration.observe(elapsed.as_secs_f64());
                }
                info!(
                    backend = %target_id,
                    from = from_id.as_deref().unwrap_or("-"),
                    reason = pending.reason,
                    duration_ms = format!("{:.1}", elapsed.as_secs_f64() * 1e3),
                    "active instance changed; traffic switched"
                );
                if let Some(r) = pending.reply {
                    let _ = r.send(Ok(format!("{target_id} is active")));
                }
            }
            Err(e) => {
                self.lost = lost.or(Some(Lost { at: since, from: None, reason: pending.reason }));
                self.members[p.target].cooldown_until = Some(now + PROMOTION_COOLDOWN);
                self.retry_at = Some(now + RETRY_PAUSE);
                self.shared.metrics.failover_failures.with_label_values(&[pending.reason]).inc();
                error!(backend = %target_id, reason = pending.reason, error = %e, "promotion failed");
                record.outcome = "failed";
                record.detail = Some(e.clone());
                if let Some(r) = pending.reply {
                    let _ = r.send(Err(e));
                }
            }
        }
        self.history.push_front(record);
        self.history.truncate(HISTORY);
    }

    fn reconcile(&mut self) {
        let now = Instant::now();
        if self.pending.is_some() {
            return;
        }
        if let Some(a) = self.active {
            let m = &self.members[a];
            let others_eligible = self.members.iter().enumerate().any(|(i, o)| i != a && o.eligible());
            let fall = self.shared.config.health.fall;
            let reason = if m.health() != Health::Up {
                Some(loss_reason(m.last_error.as_ref()))
            } else if m.runtime_state == Some(false) {
                Some("unmanageable")
            } else if m.canary_fails >= fall && others_eligible {
                Some("canary")
            } else {
                None
            };
            if let Some(reason) = reason {
                let failed = m.health() != Health::Up;
                if reason == "canary" {
                    self.members[a].cooldown_until = Some(now + CANARY_COOLDOWN);
                }
                self.lose_active(reason, failed, now);
            }
        }
        let undecided = self.members.iter().any(|m| m.health() == Health::Unknown);
        let starting = !self.elected_once && self.active.is_none() && undecided && now < self.startup_until;
        let retrying = self.retry_at.is_some_and(|t| now < t);
        if !starting && !retrying {
            let cands = self.candidates(now);
            match election::elect(self.active, &cands, &self.policy(), now) {
                Some(t) if Some(t) != self.active => {
                    let reason = match (&self.lost, self.active) {
                        (_, Some(_)) => "failback",
                        (Some(l), None) => l.reason,
                        (None, None) => "initial",
                    };
                    self.begin_promotion(t, reason, now, None);
                    return;
                }
                None if !self.warned_no_candidate => {
                    self.warned_no_candidate = true;
                    error!("no eligible instance: requests are held, then answered 503");
                }
                _ => {}
            }
        }
        if !starting {
            self.stop_strays();
            self.start_syncs(now);
        }
    }

    /// Checks (and resyncs) every healthy instance whose step is not known to be right.
    fn start_syncs(&mut self, now: Instant) {
        if self.pending.is_some() || self.active.is_none() {
            return;
        }
        let steps: Vec<bool> = {
            let sync = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            (0..self.members.len()).map(|i| sync.in_step(i)).collect()
        };
        for (i, m) in self.members.iter_mut().enumerate() {
            if steps[i] || m.sync_in_flight || m.health() != Health::Up || m.sync_retry_at.is_some_and(|t| now < t) {
                continue;
            }
            m.sync_in_flight = true;
            let (shared, client, tx, active) =
                (self.shared.clone(), self.client.clone(), self.done_tx.clone(), self.active);
            tokio::spawn(async move {
                let outcome = crate::deploy::resync(&shared, &client, i, active).await;
                let _ = tx.send(Done::Synced { index: i, outcome });
            });
        }
    }

    fn lose_active(&mut self, reason: &'static str, failed: bool, now: Instant) {
        let Some(a) = self.active.take() else { return };
        if let Some(cur) = self.current.take() {
            if failed {
                cur.failed.cancel();
            }
            cur.demoted.cancel();
        }
        self.promoted_at = None;
        self.lost = Some(Lost { at: now, from: Some(a), reason });
        warn!(backend = %self.shared.backends[a].id, reason, "active instance lost; traffic held until a standby is promoted");
        self.publish_view();
    }

    fn begin_promotion(
        &mut self,
        target: usize,
        reason: &'static str,
        now: Instant,
        reply: Option<oneshot::Sender<Result<String, String>>>,
    ) {
        if self.active.is_some() {
            // Planned move (switchover, failback): hold new traffic; in-flight requests finish.
            self.lose_active(reason, false, now);
        }
        let cfg = &self.shared.config;
        let health_timeout = cfg.health.timeout;
        let others: Vec<(usize, Arc<Backend>, Duration)> = self
            .members
            .iter()
            .enumerate()
            .filter(|&(i, m)| i != target && m.health() == Health::Up)
            .map(|(i, m)| {
                // A stopped standby answers at once; a running instance may need nodeCloseTimeout.
                let limit =
                    if m.flow_state == Some(FlowState::Stop) { health_timeout } else { cfg.failover.stop_timeout };
                (i, self.shared.backends[i].clone(), limit)
            })
            .collect();
        let known_stopped: Vec<usize> = others
            .iter()
            .filter(|(i, ..)| self.members[*i].flow_state == Some(FlowState::Stop))
            .map(|(i, ..)| *i)
            .collect();
        let start_timeout = cfg.failover.start_timeout;
        let backend = self.shared.backends[target].clone();
        let client = self.client.clone();
        let tx = self.done_tx.clone();
        let shared = self.shared.clone();
        info!(backend = %backend.id, reason, stopping = others.len(), "promoting");
        tokio::spawn(async move {
            // Deploys and resyncs never interleave with a promotion: fence the current holder
            // of the change lock (its outstanding calls are abandoned) and take the lock.
            crate::deploy::fence_changes(&shared);
            let guard = crate::deploy::lock_changes(&shared, shared.config.deploy.timeout).await;
            if guard.is_none() {
                warn!("the change lock stayed busy; promoting without it");
            }
            let out_of_step = matches!(
                shared.sync.lock().unwrap_or_else(|e| e.into_inner()).steps[target],
                crate::sync::Step::OutOfStep(_)
            );
            let p = promote(client.clone(), target, backend.clone(), others, known_stopped, start_timeout, async {
                if !out_of_step {
                    return;
                }
                // Only out-of-step candidates were eligible: bring this one in step from the
                // remembered target before starting its flows.
                let fence = CancellationToken::new();
                match crate::deploy::resync_locked(&shared, &client, target, None, &fence).await {
                    crate::deploy::SyncOutcome::Failed(why) => {
                        shared.metrics.promotions_out_of_step.inc();
                        error!(backend = %backend.id, error = %why, "promoting an instance that could not be brought in step");
                    }
                    _ => info!(backend = %backend.id, "resynced before promotion"),
                }
            })
            .await;
            drop(guard);
            let _ = tx.send(Done::Promoted(p));
        });
        self.pending = Some(Pending { target, reason, started: now, reply });
    }

    fn stop_strays(&mut self) {
        for (i, m) in self.members.iter_mut().enumerate() {
            let running = matches!(m.flow_state, Some(FlowState::Start | FlowState::Safe));
            if Some(i) == self.active || m.health() != Health::Up || !running || m.stop_in_flight {
                continue;
            }
            if m.stop_retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            if m.runtime_state == Some(false) {
                continue; // cannot be stopped through the API; reported when detected
            }
            m.stop_in_flight = true;
            let was = m.flow_state.expect("running");
            let backend = self.shared.backends[i].clone();
            let client = self.client.clone();
            let timeout = self.shared.config.failover.stop_timeout;
            let tx = self.done_tx.clone();
            tokio::spawn(async move {
                let result = backend.set_flow_state(&client, FlowState::Stop, timeout).await;
                let _ = tx.send(Done::Stopped { index: i, was, result });
            });
        }
    }

    fn publish_view(&mut self) {
        self.generation += 1;
        let active = self.active.map(|i| {
            Arc::new(Active {
                index: i,
                backend: self.shared.backends[i].clone(),
                failed: CancellationToken::new(),
                demoted: CancellationToken::new(),
            })
        });
        self.current = active.clone();
        self.shared.view.store(Arc::new(View { generation: self.generation, active }));
        self.shared.generation.send_replace(self.generation);
    }

    fn role(&self, i: usize) -> &'static str {
        let m = &self.members[i];
        if Some(i) == self.active {
            "active"
        } else if self.pending.as_ref().is_some_and(|p| p.target == i) {
            "promoting"
        } else if m.health() != Health::Up {
            "down"
        } else if m.runtime_state == Some(false) {
            "unmanageable"
        } else {
            "standby"
        }
    }

    fn publish_status(&self) {
        let metrics = &self.shared.metrics;
        let mut running = 0;
        let sync = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        let backends = self
            .shared
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let m = &self.members[i];
                let role = self.role(i);
                let up = m.health() == Health::Up;
                let state = if up { m.flow_state.map(FlowState::as_str) } else { None };
                running += i64::from(state == Some("start"));
                metrics.set_backend(b.id.as_str(), up, role, state.unwrap_or("unknown"));
                let revision = sync.applied[i].rev.clone();
                metrics.set_sync(b.id.as_str(), sync.in_step(i), revision.as_deref());
                let step = match &sync.steps[i] {
                    crate::sync::Step::InStep => "in_step".to_string(),
                    crate::sync::Step::Unknown => "unknown".to_string(),
                    crate::sync::Step::OutOfStep(why) => format!("out_of_step: {why}"),
                };
                BackendStatus {
                    id: b.id.to_string(),
                    url: format!("http://{}", b.authority),
                    priority: b.priority,
                    health: m.health().as_str(),
                    role,
                    flow_state: state,
                    runtime_state_enabled: m.runtime_state,
                    canary: (b.has_canary() && m.canary_checked && Some(i) == self.active)
                        .then_some(if m.canary_fails == 0 { "ok" } else { "failing" }),
                    last_probe_unix_ms: m.last_probe.map(|(t, _)| unix_ms(t)),
                    last_probe_latency_ms: m.last_probe.map(|(_, l)| l.as_secs_f64() * 1e3),
                    last_error: m.last_error.as_ref().map(|e| e.to_string()),
                    revision,
                    step,
                }
            })
            .collect();
        metrics.instances_running_flows.set(running);
        metrics.active_present.set(i64::from(self.active.is_some()));
        let phase = match (self.active, &self.pending) {
            (_, Some(_)) => "promoting",
            (Some(_), None) => "serving",
            (None, None) if !self.elected_once => "starting",
            (None, None) => "no_active",
        };
        self.shared.status.store(Arc::new(Status {
            active: self.active.map(|i| self.shared.backends[i].id.to_string()),
            target_revision: sync.rev.clone(),
            phase,
            backends,
            failovers: self.history.iter().cloned().collect(),
        }));
    }
}

/// Break-before-make: stop (and confirm) every other reachable instance, then start (and
/// confirm) the target. An instance that does not answer the stop is left fenced: traffic
/// never goes to it, and it is stopped as a stray as soon as it answers again.
async fn promote(
    client: AdminClient,
    target: usize,
    backend: Arc<Backend>,
    others: Vec<(usize, Arc<Backend>, Duration)>,
    known_stopped: Vec<usize>,
    start_timeout: Duration,
    before_start: impl std::future::Future<Output = ()>,
) -> Promotion {
    let mut stops = JoinSet::new();
    for (i, b, limit) in others {
        let client = client.clone();
        stops.spawn(async move { (i, b.id.clone(), b.set_flow_state(&client, FlowState::Stop, limit).await) });
    }
    let mut stopped = Vec::new();
    let mut blocker = None;
    while let Some(joined) = stops.join_next().await {
        let (i, id, result) = joined.expect("stop task does not panic");
        match result {
            Ok(()) => stopped.push(i),
            Err(
                CallError::Refused
                | CallError::Connect(_)
                | CallError::Reset(_)
                | CallError::Timeout(_)
                | CallError::Transport(_),
            ) => {
                warn!(backend = %id, "did not answer the stop; fenced until it does");
            }
            Err(_) if known_stopped.contains(&i) => {}
            Err(e) => blocker = Some(format!("cannot stop flows on {id}, which reports them running: {e}")),
        }
    }
    if blocker.is_none() {
        before_start.await;
    }
    let outcome = match blocker {
        Some(b) => Err(b),
        None => backend
            .set_flow_state(&client, FlowState::Start, start_timeout)
            .await
            .map_err(|e| format!("start on {}: {e}", backend.id)),
    };
    Promotion { target, stopped, outcome }
}
