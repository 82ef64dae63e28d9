//! The driver: the one task that owns the cluster core and carries out its effects.
//!
//! It waits for an input (a probe report, an operator command, the result of an effect it
//! started, a change of the in-step table, the core's next timer), turns it into an
//! [`Event`], calls [`State::step`] and carries out the returned [`Effect`]s in order: admin
//! API calls run in spawned tasks whose results come back as events; the routing view,
//! logs, metrics and `/status` are written here. Nothing here decides anything.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Effect, Event, InstanceId, Notice, PromotionError, Reason, Settings, Spec, State, SwitchoverError, Sync};
use crate::backend::{AdminClient, Backend, BackendId, FlowState};
use crate::control::health::{Health, Report};
use crate::state::{Active, BackendStatus, FailoverRecord, Shared, Status, View};

const HISTORY: usize = 50;

/// Operator commands (admin API, reload).
pub enum Command {
    /// Planned move of the active role; `to: None` picks the best standby.
    Switchover { to: Option<BackendId>, reply: oneshot::Sender<Result<String, SwitchoverError>> },
    /// Config reload: hand the HA state over and stop, once no promotion is in flight. If the
    /// receiver is gone by then, keep going.
    Handover { reply: oneshot::Sender<Seed> },
}

/// What a reload carries from one driver to the next.
pub struct Seed {
    core: State,
    /// The routed active with its fencing signals, so open tunnels still close on a later
    /// demotion.
    current: Option<Arc<Active>>,
    history: VecDeque<FailoverRecord>,
}

/// Results of the effects the driver started.
enum Done {
    Event(Event),
    Locked(Option<OwnedMutexGuard<()>>),
}

pub struct Driver {
    shared: Arc<Shared>,
    client: AdminClient,
    core: State,
    current: Option<Arc<Active>>,
    history: VecDeque<FailoverRecord>,
    generation: u64,
    lock: Option<OwnedMutexGuard<()>>,
    replies: HashMap<u64, oneshot::Sender<Result<String, SwitchoverError>>>,
    next_ticket: u64,
    reports: mpsc::Receiver<(usize, Report)>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    handover: Option<oneshot::Sender<Seed>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The core's view of an instance from its configured backend.
pub fn spec(b: &Backend) -> Spec {
    Spec { id: b.id.clone(), address: format!("{}://{}", b.scheme, b.authority), priority: b.priority }
}

impl Driver {
    pub fn new(
        shared: Arc<Shared>,
        client: AdminClient,
        reports: mpsc::Receiver<(usize, Report)>,
        commands: mpsc::Receiver<Command>,
        seed: Option<Seed>,
    ) -> Self {
        let now = Instant::now();
        let specs: Vec<Spec> = shared.backends().map(|b| spec(b)).collect();
        let settings = Settings::from_config(&shared.config);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut d = Driver {
            core: State::new(specs.clone(), settings.clone(), now),
            shared,
            client,
            current: None,
            history: VecDeque::new(),
            generation: 0,
            lock: None,
            replies: HashMap::new(),
            next_ticket: 0,
            reports,
            commands,
            done_tx,
            done_rx,
            handover: None,
        };
        if let Some(seed) = seed {
            d.core = State::reconfigured(seed.core, specs, settings, now);
            d.history = seed.history;
            if let (Some(id), Some(old)) = (d.core.active().cloned(), seed.current) {
                let i = d.index(&id);
                // Same instance: keep its fencing signals.
                let backend = d.shared.backend(i).clone();
                d.publish(Some(Arc::new(Active {
                    index: i,
                    backend,
                    failed: old.failed.clone(),
                    demoted: old.demoted.clone(),
                })));
            }
        }
        d
    }

    fn index(&self, id: &InstanceId) -> usize {
        self.shared.backends().position(|b| &b.id == id).expect("the core names configured instances")
    }

    /// Answers a pending handover once nothing is in flight. True when this driver ends.
    fn try_handover(&mut self) -> bool {
        if self.core.busy() {
            return false;
        }
        match self.handover.take() {
            Some(reply) => {
                let seed =
                    Seed { core: self.core.clone(), current: self.current.clone(), history: self.history.clone() };
                reply.send(seed).is_ok()
            }
            None => false,
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let now = Instant::now();
            self.refresh_steps(now);
            if self.try_handover() {
                info!("supervision handed over to the reloaded configuration");
                return;
            }
            self.publish_status();
            let wake = self.core.next_wake(now).unwrap_or(now + Duration::from_secs(3600));
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                Some((i, report)) = self.reports.recv() => {
                    self.observe_probe(i, &report);
                    Some(Event::Probe { id: self.shared.backend(i).id.clone(), report })
                }
                Some(c) = self.commands.recv() => match c {
                    Command::Switchover { to, reply } => {
                        self.next_ticket += 1;
                        self.replies.insert(self.next_ticket, reply);
                        Some(Event::Switchover { to, ticket: self.next_ticket })
                    }
                    Command::Handover { reply } => {
                        self.handover = Some(reply);
                        None
                    }
                },
                Some(d) = self.done_rx.recv() => match d {
                    Done::Event(e) => Some(e),
                    Done::Locked(guard) => {
                        let got = guard.is_some();
                        self.lock = guard;
                        Some(Event::ChangeLockTaken { got })
                    }
                },
                // The in-step table changed: refreshed at the top of the loop.
                _ = self.shared.sync_changed.notified() => None,
                _ = tokio::time::sleep_until(wake) => Some(Event::Tick),
            };
            if let Some(event) = event {
                // Decide on the in-step table as it is now: a deploy may have marked an
                // instance out of step while this event was on its way (a promotion taking
                // the change lock right after such a deploy must see it).
                let now = Instant::now();
                self.refresh_steps(now);
                self.apply(event, now);
            }
        }
        // flowgate's own exit leaves every instance as it is: the active keeps running flows.
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(SwitchoverError::ShuttingDown));
        }
    }

    fn apply(&mut self, event: Event, now: Instant) {
        for effect in self.core.step(event, now) {
            self.carry_out(effect);
        }
    }

    /// Feeds the in-step table to the core when it changed (deploys and resyncs write it).
    fn refresh_steps(&mut self, now: Instant) {
        let steps: Vec<(InstanceId, Sync)> = {
            let t = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            self.shared
                .backends()
                .zip(&t.steps)
                .map(|(b, s)| {
                    let s = match s {
                        crate::editor::sync::Step::Unknown => Sync::Unknown,
                        crate::editor::sync::Step::InStep => Sync::InStep,
                        crate::editor::sync::Step::OutOfStep(_) => Sync::OutOfStep,
                    };
                    (b.id.clone(), s)
                })
                .collect()
        };
        let changed = steps.iter().any(|(id, s)| self.core.member(id).is_some_and(|m| m.sync != *s));
        if changed {
            self.apply(Event::Steps(steps), now);
        }
    }

    fn observe_probe(&self, i: usize, r: &Report) {
        let (id, metrics) = (self.shared.backend(i).id.as_str(), &self.shared.metrics);
        metrics.probe_duration.with_label_values(&[id]).observe(r.latency.as_secs_f64());
        if let Err(e) = &r.state {
            metrics.probe_failures.with_label_values(&[id, e.kind()]).inc();
        }
    }

    fn spawn(&self, call: impl std::future::Future<Output = Event> + Send + 'static) {
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Done::Event(call.await));
        });
    }

    fn carry_out(&mut self, effect: Effect) {
        let shared = self.shared.clone();
        let client = self.client.clone();
        match effect {
            Effect::Release { failed, .. } => {
                if let Some(cur) = self.current.take() {
                    if failed {
                        cur.failed.cancel();
                    }
                    cur.demoted.cancel();
                }
            }
            Effect::Route(id) => {
                let active = id.map(|id| {
                    let index = self.index(&id);
                    let backend = self.shared.backend(index).clone();
                    Arc::new(Active {
                        index,
                        backend,
                        failed: CancellationToken::new(),
                        demoted: CancellationToken::new(),
                    })
                });
                self.publish(active);
            }
            Effect::TakeChangeLock => {
                let (tx, wait) = (self.done_tx.clone(), shared.config.deploy.timeout);
                tokio::spawn(async move {
                    let _ = tx.send(Done::Locked(shared.changes.take_over(wait).await));
                });
            }
            Effect::ReleaseChangeLock => self.lock = None,
            Effect::StopFlows { id, timeout, purpose } => {
                let b = shared.backend(self.index(&id)).clone();
                self.spawn(async move {
                    let result = b.set_flow_state(&client, FlowState::Stop, timeout).await;
                    Event::Stopped { id, purpose, result }
                });
            }
            Effect::StartFlows { id, timeout } => {
                let b = shared.backend(self.index(&id)).clone();
                self.spawn(async move {
                    let result = b.set_flow_state(&client, FlowState::Start, timeout).await;
                    Event::Started { id, result }
                });
            }
            Effect::Resync { id, source, locked } => {
                let (i, source) = (self.index(&id), source.map(|s| self.index(&s)));
                self.spawn(async move {
                    let outcome = if locked {
                        // The promotion holds the change lock: nothing else can fence this.
                        let fence = CancellationToken::new();
                        crate::editor::resync::resync_locked(&shared, &client, i, source, &fence).await
                    } else {
                        crate::editor::resync::resync(&shared, &client, i, source).await
                    };
                    Event::Synced { id, outcome }
                });
            }
            Effect::Recheck(id) => {
                let i = self.index(&id);
                let mut t = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
                if t.in_step(i) {
                    t.steps[i] = crate::editor::sync::Step::Unknown;
                }
            }
            Effect::Reply { ticket, result } => {
                if let Some(reply) = self.replies.remove(&ticket) {
                    let _ = reply.send(result);
                }
            }
            Effect::Notice(n) => self.notice(n),
        }
    }

    fn publish(&mut self, active: Option<Arc<Active>>) {
        self.generation += 1;
        self.current = active.clone();
        self.shared.view.store(Arc::new(View { generation: self.generation, active }));
        self.shared.generation.send_replace(self.generation);
    }

    /// Logs and counts one transition.
    fn notice(&mut self, n: Notice) {
        let m = &self.shared.metrics;
        match n {
            Notice::Up { id, flow_state } => info!(backend = %id, flow_state = ?flow_state, "instance is up"),
            Notice::Down { id, error } => {
                let err = error.map(|e| e.to_string()).unwrap_or_default();
                warn!(backend = %id, error = %err, "instance is down");
            }
            Notice::Unmanageable { id } => {
                error!(backend = %id, "runtimeState is disabled, so flowgate cannot start or stop flows here and will never promote it; set `runtimeState: {{ enabled: true, ui: false }}` in its settings.js");
            }
            Notice::CanaryFailing { id, error } => {
                warn!(backend = %id, error = %error, "canary failed on the active instance");
            }
            Notice::ActiveLost { id, reason } => {
                warn!(backend = %id, reason = reason.as_str(), "active instance lost; traffic held until a standby is promoted");
            }
            Notice::NoCandidate => error!("no eligible instance: requests are held, then answered 503"),
            Notice::Promoting { id, reason, stopping } => {
                info!(backend = %id, reason = reason.as_str(), stopping, "promoting");
            }
            Notice::LockBusy => warn!("the change lock stayed busy; promoting without it"),
            Notice::StopUnanswered { id } => warn!(backend = %id, "did not answer the stop; fenced until it does"),
            Notice::ResyncedBeforePromotion { id, error: None } => info!(backend = %id, "resynced before promotion"),
            Notice::ResyncedBeforePromotion { id, error: Some(why) } => {
                m.promotions_out_of_step.inc();
                error!(backend = %id, error = %why, "promoting an instance that could not be brought in step");
            }
            Notice::Promotion { from, to, reason, elapsed, result } => self.record(from, to, reason, elapsed, result),
            Notice::StrayStopped { id, was } => {
                m.stray_starts_stopped.with_label_values(&[id.as_str()]).inc();
                warn!(backend = %id, was = was.as_str(), "stopped flows on a non-active instance (stray start)");
            }
            Notice::StrayStopFailed { id, error } => {
                error!(backend = %id, error = %error, "could not stop flows on a non-active instance; retrying in 5 s");
            }
            Notice::Resynced { id, result: Ok(()) } => {
                m.resyncs.with_label_values(&[id.as_str(), "ok"]).inc();
                info!(backend = %id, "instance brought back in step (flows and credentials)");
            }
            Notice::Resynced { id, result: Err(why) } => {
                m.resyncs.with_label_values(&[id.as_str(), "failed"]).inc();
                warn!(backend = %id, error = %why, "could not bring the instance in step; retrying");
            }
        }
    }

    fn record(
        &mut self,
        from: Option<InstanceId>,
        to: InstanceId,
        reason: Reason,
        elapsed: Duration,
        result: Result<(), PromotionError>,
    ) {
        let m = &self.shared.metrics;
        let ms = elapsed.as_secs_f64() * 1e3;
        let from_id = from.map(|f| f.to_string());
        let mut record = FailoverRecord {
            at_unix_ms: unix_ms(SystemTime::now()),
            from: from_id.clone(),
            to: Some(to.to_string()),
            reason: reason.as_str(),
            duration_ms: ms,
            outcome: "ok",
            detail: None,
        };
        match result {
            Ok(()) => {
                if reason != Reason::Initial {
                    m.failovers.with_label_values(&[reason.as_str()]).inc();
                    m.failover_duration.observe(elapsed.as_secs_f64());
                }
                info!(
                    backend = %to,
                    from = from_id.as_deref().unwrap_or("-"),
                    reason = reason.as_str(),
                    duration_ms = format!("{ms:.1}"),
                    "active instance changed; traffic switched"
                );
            }
            Err(e) => {
                m.failover_failures.with_label_values(&[reason.as_str()]).inc();
                error!(backend = %to, reason = reason.as_str(), error = %e, "promotion failed");
                record.outcome = "failed";
                record.detail = Some(e.to_string());
            }
        }
        self.history.push_front(record);
        self.history.truncate(HISTORY);
    }

    fn publish_status(&self) {
        let metrics = &self.shared.metrics;
        let mut running = 0;
        let sync = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        let active = self.core.active();
        let backends = self
            .shared
            .backends()
            .zip(self.core.members())
            .enumerate()
            .map(|(i, (b, m))| {
                let role = self.core.role(&b.id).as_str();
                let up = m.health() == Health::Up;
                let state = if up { m.flow_state.map(FlowState::as_str) } else { None };
                running += i64::from(state == Some("start"));
                metrics.set_backend(b.id.as_str(), up, role, state.unwrap_or("unknown"));
                let revision = sync.applied[i].rev.clone();
                metrics.set_sync(b.id.as_str(), sync.in_step(i), revision.as_deref());
                let step = match &sync.steps[i] {
                    crate::editor::sync::Step::InStep => "in_step".to_string(),
                    crate::editor::sync::Step::Unknown => "unknown".to_string(),
                    crate::editor::sync::Step::OutOfStep(why) => format!("out_of_step: {why}"),
                };
                let is_active = active == Some(&b.id);
                BackendStatus {
                    id: b.id.to_string(),
                    url: format!("http://{}", b.authority),
                    priority: b.priority,
                    health: m.health().as_str(),
                    role,
                    flow_state: state,
                    runtime_state_enabled: m.runtime_state,
                    canary: (b.has_canary() && is_active)
                        .then(|| m.canary_ok())
                        .flatten()
                        .map(|ok| if ok { "ok" } else { "failing" }),
                    last_probe_unix_ms: m.last_probe.map(|(t, _)| unix_ms(t)),
                    last_probe_latency_ms: m.last_probe.map(|(_, l)| l.as_secs_f64() * 1e3),
                    last_error: m.last_error.as_ref().map(|e| e.to_string()),
                    revision,
                    step,
                }
            })
            .collect();
        metrics.instances_running_flows.set(running);
        metrics.active_present.set(i64::from(active.is_some()));
        self.shared.status.store(Arc::new(Status {
            active: active.map(|id| id.to_string()),
            target_revision: sync.rev.clone(),
            phase: self.core.phase().as_str(),
            backends,
            failovers: self.history.iter().cloned().collect(),
        }));
    }
}
