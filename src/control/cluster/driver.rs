//! The driver: the one task that owns the cluster core and carries out its effects.
//!
//! It waits for an input (a probe report, an operator command, the result of an effect it
//! started, a change of the in-step table, the core's next timer), turns it into an
//! [`Event`], calls [`State::step`] and carries out the returned [`Effect`]s in order: admin
//! API calls run in spawned tasks whose results come back as events; the routing view,
//! logs, metrics and `/status` are written here. Nothing here decides anything.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{CommandError, Effect, Event, InstanceId, Settings, Spec, State, Sync};
use crate::backend::{AdminClient, Backend, BackendId, CallError, FlowState};
use crate::control::coord::{FromStore, Link, StoreView, ToStore};
use crate::control::health::Report;
use crate::state::{Active, FailoverRecord, Shared, View};

/// Operator commands (admin API, reload).
pub enum Command {
    /// Planned move of the active role; `to: None` picks the best standby.
    Switchover { to: Option<BackendId>, reply: Reply },
    /// Restart a non-active instance with its command; answered once it is back.
    Restart { id: BackendId, reply: Reply },
    /// Restart every instance, standbys first, with one switchover.
    RollingRestart { reply: Reply },
    /// Config reload: hand the HA state over and stop, once no promotion is in flight. If the
    /// receiver is gone by then, keep going.
    Handover { reply: oneshot::Sender<Seed> },
}

/// Where an operator command's answer goes.
pub type Reply = oneshot::Sender<Result<String, CommandError>>;

/// What a reload carries from one driver to the next.
pub struct Seed {
    core: State,
    /// The routed active with its fencing signals, so open tunnels still close on a later
    /// demotion.
    current: Option<Arc<Active>>,
    /// Load-balanced mode: the instances routed to, with their signals.
    rotation: Vec<Arc<Active>>,
    history: VecDeque<FailoverRecord>,
    link: Option<Link>,
    store: Option<StoreView>,
}

/// Results of the effects the driver started.
enum Done {
    Event(Event),
    Locked(Option<OwnedMutexGuard<()>>),
}

mod replicas;
mod report;

pub struct Driver {
    shared: Arc<Shared>,
    client: AdminClient,
    core: State,
    current: Option<Arc<Active>>,
    rotation: Vec<Arc<Active>>,
    history: VecDeque<FailoverRecord>,
    generation: u64,
    lock: Option<OwnedMutexGuard<()>>,
    replies: HashMap<u64, Reply>,
    next_ticket: u64,
    reports: mpsc::Receiver<(usize, Report)>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    handover: Option<oneshot::Sender<Seed>>,
    /// Replicas: the link to the store's session, and how the store looks.
    link: Option<Link>,
    store: Option<StoreView>,
    /// Shared with the probers: the epoch they carry.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Readiness findings of the target flows, and the revision they are for.
    readiness: Option<Arc<crate::state::Readiness>>,
    /// Replicas: the credential generation last shared through the store.
    shared_cred_gen: Option<u64>,
}

/// The next message from the store, or never without one.
async fn from_store(link: &mut Option<Link>) -> Option<FromStore> {
    match link {
        Some(l) => l.from_store.recv().await,
        None => std::future::pending().await,
    }
}

/// The core's view of an instance from its configured backend.
pub fn spec(b: &Backend) -> Spec {
    Spec {
        id: b.id.clone(),
        address: format!("{}://{}", b.scheme, b.authority),
        priority: b.priority,
        restartable: b.restart.is_some(),
    }
}

impl Driver {
    pub fn new(
        shared: Arc<Shared>,
        client: AdminClient,
        reports: mpsc::Receiver<(usize, Report)>,
        commands: mpsc::Receiver<Command>,
        mut seed: Option<Seed>,
        link: Option<Link>,
        epoch: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let now = Instant::now();
        let specs: Vec<Spec> = shared.backends().map(|b| spec(b)).collect();
        // Replicated only with a live link to the store, whatever the reloaded file says: the
        // session is started once, with flowgate.
        let link = seed.as_mut().and_then(|s| s.link.take()).or(link);
        let settings = Settings { replicated: link.is_some(), ..Settings::from_config(&shared.config) };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut d = Driver {
            core: State::new(specs.clone(), settings.clone(), now),
            shared,
            client,
            current: None,
            rotation: Vec::new(),
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
            link,
            store: None,
            epoch,
            readiness: None,
            shared_cred_gen: None,
        };
        if let Some(seed) = seed {
            d.core = State::reconfigured(seed.core, specs, settings, now);
            d.history = seed.history;
            d.store = seed.store;
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
            // Load-balanced: the same instances stay routed, with their signals.
            if d.shared.config.mode == crate::readiness::Mode::LoadBalanced {
                d.rotation = seed.rotation;
                let ids: Vec<InstanceId> = d.core.rotation().cloned().collect();
                d.set_rotation(ids);
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
                let seed = Seed {
                    core: self.core.clone(),
                    current: self.current.clone(),
                    rotation: self.rotation.clone(),
                    history: self.history.clone(),
                    link: self.link.take(),
                    store: self.store.clone(),
                };
                match reply.send(seed) {
                    Ok(()) => true,
                    Err(seed) => {
                        self.link = seed.link;
                        false
                    }
                }
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
            self.refresh_readiness();
            self.route_writes();
            self.share_credentials();
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
                        let ticket = self.ticket(reply);
                        Some(Event::Switchover { to, ticket })
                    }
                    Command::Restart { id, reply } => {
                        let ticket = self.ticket(reply);
                        Some(Event::Restart { id, ticket })
                    }
                    Command::RollingRestart { reply } => {
                        let ticket = self.ticket(reply);
                        Some(Event::RollingRestart { ticket })
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
                Some(m) = from_store(&mut self.link) => match m {
                    FromStore::Leadership(lead) => Some(Event::Leadership(lead)),
                    FromStore::Record(r) => Some(Event::Record(r)),
                    FromStore::Suspect(id) => {
                        // Not trusted, only looked at: probe it now.
                        if let Some(i) = self.shared.backends().position(|b| b.id == id) {
                            self.shared.suspect(i);
                        }
                        None
                    }
                    FromStore::Credentials(sealed) => {
                        self.adopt_credentials(&sealed);
                        None
                    }
                    FromStore::Token { hash, info } => {
                        self.shared.tokens.mirror(&hash, info);
                        None
                    }
                    FromStore::View(v) => {
                        if !v.connected {
                            self.shared.metrics.cluster_store_errors.inc();
                        }
                        self.store = Some(v);
                        None
                    }
                },
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
            let _ = reply.send(Err(CommandError::ShuttingDown));
        }
    }

    fn ticket(&mut self, reply: Reply) -> u64 {
        self.next_ticket += 1;
        self.replies.insert(self.next_ticket, reply);
        self.next_ticket
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

    /// A controller's command whose lease renewal is not fresh: it is not sent, and the core
    /// is told that this replica no longer leads (before the command's result), whichever of
    /// this process's tasks woke first after a freeze.
    fn deposed(&self, epoch: Option<u64>) -> bool {
        let stale = epoch.is_some() && self.link.as_ref().is_some_and(|l| !l.lease.fresh(Instant::now()));
        if stale {
            self.shared.metrics.cluster_fenced.inc();
            let _ = self.done_tx.send(Done::Event(Event::Leadership(None)));
            if let Some(l) = &self.link {
                let _ = l.to_store.send(ToStore::Resign);
            }
        }
        stale
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
            Effect::Release { id, failed } => {
                let i = self.index(&id);
                let gone = match self.current.take() {
                    Some(cur) => Some(cur),
                    None => self.rotation.iter().position(|a| a.index == i).map(|p| self.rotation.remove(p)),
                };
                if let Some(cur) = gone {
                    if failed {
                        cur.failed.cancel();
                    }
                    cur.demoted.cancel();
                }
            }
            Effect::Rotation(ids) => self.set_rotation(ids),
            Effect::Route(id) => {
                let active = id.map(|id| {
                    let index = self.index(&id);
                    Active::new(index, self.shared.backend(index).clone())
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
            Effect::StopFlows { id, timeout, purpose, drain, epoch } => {
                if self.deposed(epoch) {
                    return self.spawn(async move { Event::Stopped { id, purpose, result: Err(CallError::Fenced) } });
                }
                let i = self.index(&id);
                let b = shared.backend(i).clone();
                self.spawn(async move {
                    if drain {
                        // Held requests wait `failover.hold`: leave them half of it.
                        shared.instances[i].pool.drained(shared.config.failover.hold / 2).await;
                    }
                    let result = b.set_flow_state(&client, FlowState::Stop, epoch, timeout).await;
                    if result == Err(crate::backend::CallError::Fenced) {
                        shared.metrics.cluster_fenced.inc();
                    }
                    Event::Stopped { id, purpose, result }
                });
            }
            Effect::StartFlows { id, timeout, epoch } => {
                if self.deposed(epoch) {
                    return self.spawn(async move { Event::Started { id, result: Err(CallError::Fenced) } });
                }
                let b = shared.backend(self.index(&id)).clone();
                self.spawn(async move {
                    let result = b.set_flow_state(&client, FlowState::Start, epoch, timeout).await;
                    if result == Err(crate::backend::CallError::Fenced) {
                        shared.metrics.cluster_fenced.inc();
                    }
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
                // Restarted, perhaps with other users: its logins are asked about again.
                shared.tokens.unconfirm_issuer(id.as_str());
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
            Effect::Publish(record) => {
                if let Some(l) = &self.link {
                    let _ = l.to_store.send(ToStore::Publish(record));
                }
            }
            Effect::Suspect(id) => {
                if let Some(l) = &self.link {
                    let _ = l.to_store.send(ToStore::Suspect(id));
                }
            }
            Effect::Restart { id, reason } => {
                let b = shared.backend(self.index(&id)).clone();
                self.spawn(async move {
                    let result = match &b.restart {
                        Some(cmd) => crate::ops::restart::run(cmd, id.as_str(), reason.as_str()).await,
                        None => Err("no restart command is configured".into()),
                    };
                    Event::Restarted { id, result }
                });
            }
            Effect::Notice(n) => self.notice(n),
        }
    }

    /// Load-balanced mode: routes to `ids`, keeping the signals of those already routed to.
    fn set_rotation(&mut self, ids: Vec<InstanceId>) {
        let old = std::mem::take(&mut self.rotation);
        for id in ids {
            let index = self.index(&id);
            let backend = self.shared.backend(index);
            let a = match old.iter().find(|a| a.backend.id == id) {
                Some(a) if a.index == index && Arc::ptr_eq(&a.backend, backend) => a.clone(),
                // The same instance in a reloaded configuration: keep its signals.
                Some(a) => Arc::new(Active {
                    index,
                    backend: backend.clone(),
                    failed: a.failed.clone(),
                    demoted: a.demoted.clone(),
                }),
                None => {
                    self.shared.instances[index].pool.slow_start();
                    Active::new(index, backend.clone())
                }
            };
            self.rotation.push(a);
        }
        // Dropped without a release (a reload removed it): its tunnels close.
        for a in old.iter().filter(|a| !self.rotation.iter().any(|r| r.backend.id == a.backend.id)) {
            a.demoted.cancel();
        }
        self.generation += 1;
        let view = View {
            generation: self.generation,
            active: self.rotation.first().cloned(),
            rotation: self.rotation.clone(),
        };
        self.shared.view.store(Arc::new(view));
        self.shared.generation.send_replace(self.generation);
    }

    fn publish(&mut self, active: Option<Arc<Active>>) {
        if let Some(a) = &active
            && self.current.as_ref().is_none_or(|c| c.index != a.index)
        {
            // Newly routed to: its first requests go in small waves (`upstream.rs`).
            self.shared.instances[a.index].pool.slow_start();
        }
        self.generation += 1;
        self.current = active.clone();
        self.shared.view.store(Arc::new(View { generation: self.generation, active, rotation: Vec::new() }));
        self.shared.generation.send_replace(self.generation);
    }
}
