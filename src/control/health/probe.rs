//! The probe loop of one instance: every `interval`, or at once when kicked (passive detection
//! on live traffic), ask `GET <admin>/flows/state` with a timeout. A hung event loop still
//! accepts TCP but never answers, so only an HTTP-level timeout detects it. After a failed
//! probe of a healthy instance the next probe starts immediately, so a hang is confirmed in
//! about `fall × timeout` rather than `fall × interval`.
//!
//! Live traffic is watched too (`backend/activity.rs`): when proxied requests have waited a
//! quarter of the time-out with nothing answered, a probe starts at once instead of at the
//! next tick; when they have waited the whole time-out, that is reported as a failure of its
//! own, as a probe time-out is. A hung active under traffic is thus confirmed about
//! `1.25 × timeout` after it stopped answering (with `fall: 2`), whatever the probe phase; a
//! slow request on a healthy instance is not evidence, since the probe it starts is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::time::SystemTime;

use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Report;
use crate::backend::{AdminClient, Backend, CallError};
use crate::config::HealthConfig;

/// Whether the supervisor wants the canary probed on this instance (the active only).
pub trait CanaryWanted: Send + Sync + 'static {
    fn canary_wanted(&self, backend: &Backend) -> bool;
}

pub struct Prober {
    pub index: usize,
    pub backend: Arc<Backend>,
    pub client: AdminClient,
    pub health: HealthConfig,
    pub kick: Arc<Notify>,
    pub wants: Arc<dyn CanaryWanted>,
    pub reports: mpsc::Sender<(usize, Report)>,
    /// The controller epoch this replica holds (0: none); probes carry it so that every
    /// instance learns a new controller's epoch within one interval (replicas).
    pub epoch: Arc<AtomicU64>,
    /// Replicas: only the controller's probes carry an epoch and heartbeats.
    pub replicated: bool,
}

impl Prober {
    /// The epoch (the controller's), and a heartbeat for the routed active's dead-man switch
    /// when this flowgate decides (alone, or the controller).
    fn fence(&self) -> crate::backend::Fence {
        let epoch = Some(self.epoch.load(Ordering::Relaxed)).filter(|&e| e > 0);
        let decides = !self.replicated || epoch.is_some();
        crate::backend::Fence { epoch, heartbeat: decides && self.wants.canary_wanted(&self.backend) }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.health.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut settings_checked = false;
        let mut failures_in_row = 0u32;
        let mut refused_in_row = 0u32;
        // The waits of proxied requests already acted on: one early probe, one failure each.
        let (mut kicked, mut counted) = (None, None);
        loop {
            let fast_retry = failures_in_row > 0 && failures_in_row < self.health.fall;
            if refused_in_row > 0 {
                // Nothing listens: asking again costs nothing, and a rebooted instance that
                // comes back running its flows is caught within one short interval.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(down_interval(refused_in_row, self.health.interval)) => {}
                    _ = self.kick.notified() => {}
                }
            } else if !fast_retry {
                let watch = failures_in_row == 0;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticker.tick() => {}
                    _ = self.kick.notified() => {}
                    wait = self.silence(self.health.timeout / 4, kicked), if watch => kicked = Some(wait),
                }
            }
            let started = Instant::now();
            let timeout = self.health.timeout;
            let probe = self.backend.flow_state(&self.client, self.fence(), timeout);
            let mut probe = std::pin::pin!(probe);
            let state = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    s = &mut probe => break s,
                    wait = self.silence(timeout, counted), if failures_in_row < self.health.fall => {
                        counted = Some(wait);
                        failures_in_row = failures_in_row.saturating_add(1);
                        let (at, latency) = (SystemTime::now(), timeout);
                        let state = Err(CallError::Unanswered(timeout));
                        let evidence = Report { at, latency, state, runtime_state: None, canary: None };
                        if self.reports.send((self.index, evidence)).await.is_err() {
                            return;
                        }
                    }
                }
            };
            if answered(&state) {
                self.backend.activity.answered();
            }
            let latency = started.elapsed();
            let mut report = Report { at: SystemTime::now(), latency, state, runtime_state: None, canary: None };
            refused_in_row = match &report.state {
                Err(CallError::Refused) => refused_in_row.saturating_add(1),
                _ => 0,
            };
            if report.state.is_ok() {
                failures_in_row = 0;
                if !settings_checked {
                    let r = self.backend.runtime_state_enabled(&self.client, timeout).await;
                    settings_checked = r.is_ok();
                    report.runtime_state = Some(r);
                }
                if self.backend.has_canary() && self.wants.canary_wanted(&self.backend) {
                    report.canary = Some(self.backend.canary(&self.client, timeout).await);
                }
            } else {
                failures_in_row = failures_in_row.saturating_add(1);
                settings_checked = false;
            }
            if self.reports.send((self.index, report)).await.is_err() {
                return;
            }
        }
    }
}

impl Prober {
    /// Resolves when proxied requests have waited `long` with nothing answered, for a wait
    /// other than `seen`; returns which wait it is. Polls at a sixteenth of the probe time-out.
    async fn silence(&self, long: Duration, seen: Option<u64>) -> u64 {
        let every = (self.health.timeout / 16).max(Duration::from_millis(5));
        loop {
            tokio::time::sleep(every).await;
            if let Some((wait, waited)) = self.backend.activity.unanswered()
                && waited >= long
                && Some(wait) != seen
            {
                return wait;
            }
        }
    }
}

/// Whether the instance answered at all (its event loop runs), whatever it answered.
fn answered(state: &Result<crate::backend::FlowState, CallError>) -> bool {
    !matches!(
        state,
        Err(CallError::Refused
            | CallError::Connect(_)
            | CallError::Reset(_)
            | CallError::Timeout(_)
            | CallError::Unanswered(_)
            | CallError::Transport(_)
            | CallError::Local(_))
    )
}

/// How soon to probe again an instance whose port refused `n` times in a row: every 50 ms for
/// the first second, then backing off by doubling every 20 probes, up to the normal interval
/// for long outages.
pub fn down_interval(n: u32, interval: Duration) -> Duration {
    let doublings = (n.saturating_sub(1) / 20).min(8);
    (Duration::from_millis(50) * 2u32.pow(doublings)).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_instance_is_probed_often_then_less_often() {
        let i = Duration::from_millis(500);
        let ms = |n| down_interval(n, i).as_millis();
        assert_eq!([ms(1), ms(20), ms(21), ms(41), ms(61), ms(1000)], [50, 50, 100, 200, 400, 500]);
        assert_eq!(down_interval(1, Duration::from_millis(30)), Duration::from_millis(30), "never above the interval");
    }
}
