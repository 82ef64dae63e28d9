//! What the core knows: one [`Member`] per instance (in configuration order, which breaks
//! election ties) and the cluster-wide facts (the active, the promotion in progress, why the
//! last active was lost). Read-only accessors serve the driver's `/status`; only
//! [`State::step`] (in `step.rs`) changes anything.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{InstanceId, Mode, Phase, Reason, Record, Role, Sync};
use crate::backend::{CallError, FlowState};
use crate::config::Config;
use crate::control::election::{self, Candidate, Policy};
use crate::control::health::{Health, Tracker};

/// The timings and policy the core decides with (from the configuration).
#[derive(Debug, Clone)]
pub struct Settings {
    pub rise: u32,
    pub fall: u32,
    pub interval: Duration,
    /// The probe timeout; also the stop timeout for an instance known to be stopped.
    pub timeout: Duration,
    /// After a promotion, timeouts of the new active are not counted for this long.
    pub promotion_grace: Duration,
    pub failback: bool,
    pub failback_delay: Duration,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub recovery: crate::config::RecoveryConfig,
    /// The instances stop their own flows after this long without a heartbeat from flowgate
    /// (the dead-man switch of `contrib/node-red/flowgate-fence.js`): a promotion that could
    /// not confirm another instance stopped waits this long after that instance's last answer.
    pub deadman: Option<Duration>,
    /// Several replicas share the decisions: start as a follower. The driver sets it from its
    /// link to the store, not from the file (the session is started once, with flowgate).
    pub replicated: bool,
    /// `mode: load-balanced`: every in-step instance runs flows and is routed to.
    pub balanced: bool,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Settings {
            rise: c.health.rise,
            fall: c.health.fall,
            interval: c.health.interval,
            timeout: c.health.timeout,
            promotion_grace: c.health.promotion_grace,
            failback: c.failover.failback,
            failback_delay: c.failover.failback_delay,
            stop_timeout: c.failover.stop_timeout,
            start_timeout: c.failover.start_timeout,
            recovery: c.recovery.clone(),
            deadman: c.failover.deadman,
            replicated: false,
            balanced: c.mode == crate::readiness::Mode::LoadBalanced,
        }
    }
}

/// An instance as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub id: InstanceId,
    /// `scheme://host:port`: with the id, what makes it "the same instance" across a reload.
    pub address: String,
    pub priority: i64,
    /// It has a restart command.
    pub restartable: bool,
}

/// How long a candidate whose promotion failed is passed over while others are eligible.
pub(super) const PROMOTION_COOLDOWN: Duration = Duration::from_secs(5);
/// How long an instance whose canary failed is passed over while others are eligible.
pub(super) const CANARY_COOLDOWN: Duration = Duration::from_secs(60);
/// Pause before the next election after a promotion failed.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause before retrying a failed resync or stray stop.
pub(super) const RETRY_LATER: Duration = Duration::from_secs(5);
/// An instance that went down this many times within `FLAP_WINDOW` is flapping (crash-looping):
/// passed over like a cooling one while anything else is eligible, and never failed back to.
pub(super) const FLAP_DOWNS: usize = 3;
pub(super) const FLAP_WINDOW: Duration = Duration::from_secs(60);

/// What the core knows about one instance.
#[derive(Debug, Clone)]
pub struct Member {
    pub spec: Spec,
    pub(super) tracker: Tracker,
    pub flow_state: Option<FlowState>,
    /// Consecutive probes that read flows started. A stopped instance reads "start" for a few
    /// milliseconds while it boots, so one reading does not make it an instance to adopt.
    pub(super) start_readings: u32,
    /// `runtimeState.enabled`, read after each (re)connection.
    pub runtime_state: Option<bool>,
    pub(super) canary_fails: u32,
    pub(super) canary_checked: bool,
    pub(super) up_since: Option<Instant>,
    pub(super) cooldown_until: Option<Instant>,
    /// When it went down lately (within `FLAP_WINDOW`), oldest first.
    pub(super) downs: Vec<Instant>,
    pub(super) stop_in_flight: bool,
    /// Load-balanced mode: a start is on its way.
    pub(super) start_in_flight: bool,
    pub last_probe: Option<(SystemTime, Duration)>,
    /// When it stopped being the active (and so stopped getting heartbeats).
    pub(super) active_until: Option<Instant>,
    pub last_error: Option<CallError>,
    pub(super) warned_unmanageable: bool,
    pub(super) sync_in_flight: bool,
    pub(super) sync_retry_at: Option<Instant>,
    pub(super) stop_retry_at: Option<Instant>,
    /// When a stop of its flows was last confirmed: a "start" read by a probe that was on its
    /// way then (within one probe timeout) may predate the stop, and is not believed.
    pub(super) stopped_at: Option<Instant>,
    pub sync: Sync,
    pub recovery: super::Recovery,
}

impl Member {
    fn new(spec: Spec, s: &Settings) -> Self {
        Member {
            spec,
            tracker: Tracker::new(s.rise, s.fall),
            flow_state: None,
            start_readings: 0,
            runtime_state: None,
            canary_fails: 0,
            canary_checked: false,
            up_since: None,
            cooldown_until: None,
            downs: Vec::new(),
            stop_in_flight: false,
            start_in_flight: false,
            last_probe: None,
            active_until: None,
            last_error: None,
            warned_unmanageable: false,
            sync_in_flight: false,
            sync_retry_at: None,
            stop_retry_at: None,
            stopped_at: None,
            sync: Sync::Unknown,
            recovery: super::Recovery::default(),
        }
    }

    pub fn health(&self) -> Health {
        self.tracker.health()
    }

    /// Healthy and manageable, and not being restarted: may be promoted.
    pub fn eligible(&self) -> bool {
        self.health() == Health::Up
            && self.runtime_state == Some(true)
            && self.flow_state.is_some()
            && !self.recovery.restarting()
    }

    pub(super) fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|t| now < t) || self.flapping(now)
    }

    /// Went down `FLAP_DOWNS` times within the last `FLAP_WINDOW`.
    pub fn flapping(&self, now: Instant) -> bool {
        self.downs.iter().filter(|&&t| now.saturating_duration_since(t) < FLAP_WINDOW).count() >= FLAP_DOWNS
    }

    /// When it stops counting as flapping, if it does now.
    pub(super) fn flapping_until(&self, now: Instant) -> Option<Instant> {
        let recent: Vec<_> = self.downs.iter().filter(|&&t| now.saturating_duration_since(t) < FLAP_WINDOW).collect();
        (recent.len() >= FLAP_DOWNS).then(|| *recent[recent.len() - FLAP_DOWNS] + FLAP_WINDOW)
    }

    /// Runs flows by two readings in a row: worth adopting rather than stopping.
    pub(super) fn surely_running(&self) -> bool {
        self.flow_state == Some(FlowState::Start) && self.start_readings >= 2
    }

    /// Reads "start" once only, so far: wait for the next reading before electing.
    pub(super) fn maybe_running(&self) -> bool {
        self.health() == Health::Up && self.flow_state == Some(FlowState::Start) && self.start_readings < 2
    }

    /// Whether its canary was checked while active, and passes.
    pub fn canary_ok(&self) -> Option<bool> {
        self.canary_checked.then_some(self.canary_fails == 0)
    }
}

/// The active was lost at `at`; kept until the next promotion ends, for its record.
#[derive(Debug, Clone)]
pub(super) struct Lost {
    pub at: Instant,
    pub from: Option<InstanceId>,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Locking,
    Stopping,
    Resyncing,
    /// Waiting for the dead-man switch of an instance that did not confirm its stop.
    Waiting,
    Starting,
}

/// The promotion in progress.
#[derive(Debug, Clone)]
pub(super) struct Promotion {
    pub target: usize,
    pub reason: Reason,
    pub started: Instant,
    pub ticket: Option<u64>,
    pub stage: Stage,
    /// Every other instance that was up, with the stop timeout it gets.
    pub others: Vec<(usize, Duration)>,
    /// Those of them known to have flows stopped when it began.
    pub known_stopped: Vec<usize>,
    /// Stops not answered yet.
    pub waiting: Vec<usize>,
    pub stopped: Vec<usize>,
    pub blocker: Option<super::PromotionError>,
    /// The active this planned move took the role from: drained before its stop.
    pub drain: Option<usize>,
    /// Others whose stop went unanswered (unreachable, timed out).
    pub unanswered: Vec<usize>,
    /// Stage `Waiting`: until when.
    pub wait_until: Option<Instant>,
}

/// The whole HA state. One writer: whoever calls [`State::step`].
#[derive(Debug, Clone)]
pub struct State {
    pub(super) settings: Settings,
    pub(super) members: Vec<Member>,
    pub(super) active: Option<usize>,
    /// Load-balanced mode: the instances routed to, in the order they joined.
    pub(super) rotation: Vec<usize>,
    pub(super) promoted_at: Option<Instant>,
    pub(super) promotion: Option<Promotion>,
    pub(super) lost: Option<Lost>,
    pub(super) startup_until: Instant,
    pub(super) elected_once: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) warned_no_candidate: bool,
    pub(super) mode: Mode,
    /// Replicas: the active record as last seen in the store.
    pub(super) record: Option<Record>,
    pub(super) rolling: Option<super::rolling::Rolling>,
    /// How the last rolling restart ended.
    pub(super) rolling_last: Option<super::RollingView>,
    /// When this state was created: what the dead-man switch counts from for an instance that
    /// never answered.
    pub(super) created: Instant,
}

impl State {
    /// A fresh cluster: nothing known, first election once every instance answered or
    /// after two probe intervals and a timeout.
    pub fn new(specs: Vec<Spec>, settings: Settings, now: Instant) -> Self {
        let startup_until = now + settings.interval * 2 + settings.timeout;
        let mode = if settings.replicated { Mode::Follower } else { Mode::Alone };
        State {
            mode,
            record: None,
            members: specs.into_iter().map(|s| Member::new(s, &settings)).collect(),
            settings,
            active: None,
            rotation: Vec::new(),
            promoted_at: None,
            promotion: None,
            lost: None,
            startup_until,
            elected_once: false,
            retry_at: None,
            warned_no_candidate: false,
            rolling: None,
            rolling_last: None,
            created: now,
        }
    }

    /// The state after a configuration reload: what `old` knew about each instance that is
    /// still configured at the same address, with the new thresholds. Nothing may be in
    /// flight in `old` ([`State::busy`] is false).
    pub fn reconfigured(old: State, specs: Vec<Spec>, settings: Settings, now: Instant) -> Self {
        let mut new = State::new(specs, settings, now);
        let same =
            |m: &Member| new.members.iter().position(|n| n.spec.id == m.spec.id && n.spec.address == m.spec.address);
        let map: Vec<Option<usize>> = old.members.iter().map(same).collect();
        for (o, m) in old.members.into_iter().enumerate() {
            let Some(i) = map[o] else { continue };
            let spec = new.members[i].spec.clone();
            // Thresholds may have changed: keep the health, take the new rise/fall.
            let mut tracker = Tracker::new(new.settings.rise, new.settings.fall);
            match m.health() {
                Health::Up => drop(tracker.observe(true)),
                Health::Down => drop(tracker.observe(false)),
                Health::Unknown => {}
            }
            new.members[i] =
                Member { spec, tracker, sync_in_flight: false, stop_in_flight: false, start_in_flight: false, ..m };
        }
        new.active = old.active.and_then(|a| map[a]);
        new.rotation = old.rotation.iter().filter_map(|&r| map[r]).collect();
        new.promoted_at = old.promoted_at;
        new.record = old.record;
        if new.settings.replicated && old.mode != Mode::Alone {
            new.mode = old.mode;
        }
        new.elected_once = old.elected_once;
        new.rolling_last = old.rolling_last;
        new.lost = old.lost.map(|l| Lost { from: l.from.filter(|f| new.index_of(f).is_some()), ..l });
        new
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn active(&self) -> Option<&InstanceId> {
        self.active.map(|i| &self.members[i].spec.id)
    }

    /// A promotion, a restart or a rolling restart is in progress (a reload waits for it to
    /// end).
    pub fn busy(&self) -> bool {
        self.promotion.is_some() || self.rolling.is_some() || self.members.iter().any(|m| m.recovery.pins_driver())
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Replicas: the active record as last seen.
    pub fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    pub(super) fn index_of(&self, id: &InstanceId) -> Option<usize> {
        self.members.iter().position(|m| &m.spec.id == id)
    }

    pub fn member(&self, id: &InstanceId) -> Option<&Member> {
        self.index_of(id).map(|i| &self.members[i])
    }

    pub fn role(&self, id: &InstanceId) -> Role {
        let Some(i) = self.index_of(id) else { return Role::Down };
        let m = &self.members[i];
        if Some(i) == self.active || self.rotation.contains(&i) {
            Role::Active
        } else if self.promotion.as_ref().is_some_and(|p| p.target == i) {
            Role::Promoting
        } else if m.health() != Health::Up {
            Role::Down
        } else if m.runtime_state == Some(false) {
            Role::Unmanageable
        } else {
            Role::Standby
        }
    }

    pub fn phase(&self) -> Phase {
        if self.balanced() {
            return match (self.rotation.is_empty(), self.elected_once) {
                (false, _) => Phase::Serving,
                (true, false) => Phase::Starting,
                (true, true) => Phase::NoActive,
            };
        }
        match (self.active, &self.promotion) {
            (_, Some(_)) => Phase::Promoting,
            (Some(_), None) => Phase::Serving,
            (None, None) if !self.elected_once => Phase::Starting,
            (None, None) => Phase::NoActive,
        }
    }

    pub(super) fn policy(&self) -> Policy {
        Policy { failback: self.settings.failback, failback_delay: self.settings.failback_delay }
    }

    pub(super) fn candidates(&self, now: Instant) -> Vec<Candidate> {
        self.members
            .iter()
            .map(|m| Candidate {
                priority: m.spec.priority,
                eligible: m.eligible(),
                running: m.surely_running(),
                in_step: m.sync != Sync::OutOfStep,
                cooling: m.cooling(now),
                up_since: m.up_since,
            })
            .collect()
    }

    pub(super) fn in_grace(&self, i: usize, now: Instant) -> bool {
        self.active == Some(i) && self.promoted_at.is_some_and(|t| now < t + self.settings.promotion_grace)
    }

    /// When the core next needs an [`super::Event::Tick`] (cooldowns, retries, failback, the
    /// end of the start-up window or of a promotion's grace).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t.filter(|&t| t > now) {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        if !self.elected_once {
            consider(Some(self.startup_until));
        }
        consider(self.retry_at);
        consider(election::failback_due(self.active, &self.candidates(now), &self.policy()));
        for m in &self.members {
            consider(m.cooldown_until);
            consider(m.flapping_until(now));
            consider(m.sync_retry_at);
            consider(m.stop_retry_at);
        }
        if let Some(p) = self.promoted_at {
            consider(Some(p + self.settings.promotion_grace));
        }
        for i in 0..self.members.len() {
            consider(self.recovery_wake(i));
        }
        consider(self.promotion.as_ref().and_then(|p| p.wait_until));
        wake
    }
}
