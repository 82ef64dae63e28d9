//! What the driver reports: each notice of the core as a log line and metrics, the record of
//! every promotion, and the `/status` snapshot (with the metrics that mirror it).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};

use super::Driver;
use crate::backend::FlowState;
use crate::control::cluster::{InstanceId, Mode, Notice, PromotionError, Reason};
use crate::control::health::Health;
use crate::state::{BackendStatus, ClusterStatus, FailoverRecord, LastRestart, RecoveryStatus, Status};

const HISTORY: usize = 50;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Driver {
    /// Logs and counts one transition.
    pub(super) fn notice(&mut self, n: Notice) {
        let m = &self.shared.metrics;
        match n {
            Notice::Rotation { id, joined: true, why } => info!(backend = %id, why = %why, "joined the rotation"),
            Notice::Rotation { id, joined: false, why } => warn!(backend = %id, why = %why, "out of rotation"),
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
            Notice::AwaitingDeadman { ids, wait } => {
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                warn!(unconfirmed = %ids.join(", "), wait_ms = wait.as_millis() as u64, "promotion waits for the dead-man switch of instances it could not stop");
            }
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
            Notice::Leadership { epoch } => {
                m.cluster_leadership_changes.inc();
                m.cluster_controller.set(i64::from(epoch.is_some()));
                self.epoch.store(epoch.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                match epoch {
                    Some(e) => {
                        m.cluster_epoch.set(e as i64);
                        info!(epoch = e, "this replica is the controller: it alone changes flow state")
                    }
                    None => warn!("this replica is no longer the controller: it routes by the active record"),
                }
            }
            Notice::Flapping { id } => {
                warn!(backend = %id, "instance is flapping (down 3 times within 60 s): passed over while another is eligible");
            }
            Notice::PromotionAbandoned { to } => {
                warn!(backend = %to, "promotion abandoned: the leadership was lost before it completed");
            }
            Notice::Restarting { id, reason } => {
                warn!(backend = %id, reason = reason.as_str(), "restarting the instance with its restart command");
            }
            Notice::Restart { id, reason, result } => {
                let r = if result.is_ok() { "ok" } else { "failed" };
                m.restarts.with_label_values(&[id.as_str(), reason.as_str(), r]).inc();
                match result {
                    Ok(()) => info!(backend = %id, reason = reason.as_str(), "restarted: up, flows stopped, in step"),
                    Err(why) => error!(backend = %id, reason = reason.as_str(), error = %why, "restart failed"),
                }
            }
            Notice::RecoveryExhausted { id, restarts } => {
                error!(backend = %id, restarts, "still failing after the most restarts recovery.max_restarts allows within recovery.window: left down until an operator restarts it (flowgate ctl restart)");
            }
            Notice::Rolling(Ok(step)) => info!(step = %step, "rolling restart"),
            Notice::Rolling(Err(why)) => error!(error = %why, "rolling restart stopped"),
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

    /// Checks the target flows for HA hazards when their revision changed (a deploy, the
    /// active's flows adopted at start): `/status`, the metric, one log line.
    pub(super) fn refresh_readiness(&mut self) {
        use crate::readiness::{Mode, check, counts};
        let (rev, flows) = {
            let t = self.shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            if t.flows.is_none() || self.readiness.as_ref().is_some_and(|r| r.rev == t.rev) {
                return;
            }
            (t.rev.clone(), t.flows.clone().expect("checked"))
        };
        let ignore = &self.shared.config.readiness_ignore;
        let (hot_spare, load_balanced) =
            (check(&flows, Mode::HotSpare, ignore), check(&flows, Mode::LoadBalanced, ignore));
        for (mode, found) in [(Mode::HotSpare, &hot_spare), (Mode::LoadBalanced, &load_balanced)] {
            for (kind, n) in counts(found) {
                self.shared.metrics.flow_hazards.with_label_values(&[mode.as_str(), kind]).set(n as i64);
            }
        }
        let mode = self.shared.config.mode;
        let mine = if mode == Mode::LoadBalanced { &load_balanced } else { &hot_spare };
        if !mine.is_empty() {
            let list: Vec<String> = mine.iter().map(|f| format!("{} {} ({})", f.kind, f.node, f.tab)).collect();
            warn!(
                rev = rev.as_deref().unwrap_or("-"),
                mode = mode.as_str(),
                hazards = mine.len(),
                "the flows have nodes that do not survive this HA mode (advice; details in /status): {}",
                list.join(", ")
            );
        }
        self.readiness = Some(Arc::new(crate::state::Readiness {
            rev,
            mode: self.shared.config.mode.as_str(),
            hot_spare,
            load_balanced,
        }));
    }

    pub(super) fn publish_status(&self) {
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
                let flapping = m.flapping(tokio::time::Instant::now());
                metrics.backend_flapping.with_label_values(&[b.id.as_str()]).set(i64::from(flapping));
                metrics.backend_gave_up.with_label_values(&[b.id.as_str()]).set(i64::from(m.recovery.gave_up));
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
                    flapping,
                    recovery: RecoveryStatus {
                        restartable: b.restart.is_some(),
                        state: m.recovery.state(),
                        restarts: m.recovery.total,
                        recent: m.recovery.recent(self.shared.config.recovery.window, tokio::time::Instant::now()),
                        last: m.recovery.last.as_ref().map(|(reason, r)| LastRestart {
                            reason: reason.as_str(),
                            result: if r.is_ok() { "ok" } else { "failed" },
                            error: r.as_ref().err().cloned(),
                        }),
                    },
                }
            })
            .collect();
        metrics.instances_running_flows.set(running);
        let rotation: Vec<String> = self.core.rotation().map(|id| id.to_string()).collect();
        metrics.active_present.set(i64::from(active.is_some() || !rotation.is_empty()));
        metrics.load_balanced.set(i64::from(self.shared.config.mode == crate::readiness::Mode::LoadBalanced));
        self.shared.status.store(Arc::new(Status {
            mode: self.shared.config.mode.as_str(),
            active: active.map(|id| id.to_string()),
            rotation,
            target_revision: sync.rev.clone(),
            phase: self.core.phase().as_str(),
            cluster: self.shared.config.cluster.as_ref().map(|c| ClusterStatus {
                replica: c.id.clone(),
                role: match self.core.mode() {
                    Mode::Controller { .. } => "controller",
                    _ => "follower",
                },
                record: self.core.record().cloned(),
                store: self.store.clone().unwrap_or_default(),
                editor_writes: match &**self.shared.writes_to.load() {
                    crate::state::WriteRoute::Here => "here".into(),
                    crate::state::WriteRoute::Forward(url) => format!("forwarded to {url}"),
                    crate::state::WriteRoute::NoController => "refused: no controller".into(),
                },
            }),
            backends,
            readiness: self.readiness.clone(),
            rolling_restart: self.core.rolling_view(),
            failovers: self.history.iter().cloned().collect(),
        }));
    }
}
