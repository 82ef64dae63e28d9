//! The cluster core: which instance runs flows, which are stopped, and what to do next.
//!
//! Every HA decision is made by one pure state machine, [`State::step`]: given an [`Event`]
//! and the time, it updates its state and returns the [`Effect`]s to carry out. It does no
//! I/O, spawns nothing and reads no clock, so its rules are tested as event scripts
//! (`cluster/tests.rs`) without sockets. The [`driver`] is the thin async shell around it:
//! it feeds probe reports, operator commands, timer ticks and the results of effects in, and
//! carries effects out (admin API calls, the routing view, logs, metrics, `/status`).
//!
//! ```text
//!  probers ──Probe──►┐
//!  admin ─Switchover─►  State::step(event, now) ──► [Effect] ──► driver: stop/start flows,
//!  timers ───Tick────►│                                             resync, route, log, reply
//!  driver ◄──Stopped / Started / Synced / ChangeLockTaken (results of effects)──┘
//! ```
//!
//! The rules it keeps:
//! - **Break-before-make.** A promotion takes the change lock, stops flows on every other
//!   reachable instance and waits for each confirmation, then starts the target, and only then
//!   routes traffic to it. An instance that does not answer the stop is left fenced.
//! - **One promotion at a time**, and none while the previous one is unconfirmed.
//! - **Strays** (a non-active instance reporting flows started) are stopped at once.
//! - Out-of-step instances are resynced, and promoted only when nothing in step is eligible.

mod balance;
#[cfg(test)]
mod balance_tests;
mod deadman;
pub mod driver;
#[cfg(test)]
mod model_tests;
mod recovery;
#[cfg(test)]
mod recovery_tests;
mod replica;
#[cfg(test)]
mod replica_tests;
mod rolling;
mod state;
mod step;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::backend::{BackendId, CallError, FlowState};
use crate::control::health::Report;

pub use recovery::{Recovery, RestartReason};
pub use rolling::RollingView;
pub use state::{Member, Settings, Spec, State};

/// An instance's configured id: events and effects name instances by it, never by position.
pub type InstanceId = BackendId;

/// Why the active role moved (or was first given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Initial,
    /// The active's port refused or its connection broke.
    Crash,
    /// The active stopped answering within the probe timeout.
    Hang,
    Unhealthy,
    /// runtimeState was disabled on the active: flowgate cannot manage it.
    Unmanageable,
    /// The canary failed `fall` times while another instance was eligible.
    Canary,
    Switchover,
    Failback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::Crash => "crash",
            Reason::Hang => "hang",
            Reason::Unhealthy => "unhealthy",
            Reason::Unmanageable => "unmanageable",
            Reason::Canary => "canary",
            Reason::Switchover => "switchover",
            Reason::Failback => "failback",
        }
    }

    /// The reason an active is lost after a failed probe with this error.
    pub fn of_failure(err: Option<&CallError>) -> Self {
        match err {
            Some(CallError::Refused | CallError::Connect(_) | CallError::Reset(_)) => Reason::Crash,
            Some(CallError::Timeout(_) | CallError::Unanswered(_)) => Reason::Hang,
            _ => Reason::Unhealthy,
        }
    }
}

/// An instance's role as shown in `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Promoting,
    Standby,
    Down,
    Unmanageable,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Promoting => "promoting",
            Role::Standby => "standby",
            Role::Down => "down",
            Role::Unmanageable => "unmanageable",
        }
    }
}

/// The cluster's phase as shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No election yet: waiting for first probes.
    Starting,
    Serving,
    Promoting,
    NoActive,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Promoting => "promoting",
            Phase::NoActive => "no_active",
        }
    }
}

/// How an instance stands against the target flows, as the core needs to know it (the
/// target itself and the reasons live in `sync::SyncTable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Not checked since it came back or flowgate started.
    Unknown,
    InStep,
    OutOfStep,
}

/// Why flows are being stopped on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopFor {
    /// It is not active but reported flows started.
    Stray,
    /// Break-before-make: a promotion waits for it.
    Promotion,
}

/// Outcome of checking (and if needed resyncing) one instance against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    InStep,
    Resynced,
    Failed(String),
}

/// The active record replicas agree on. Only the controller writes it, in a transaction
/// guarded by its leadership; every replica routes by it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub active: Option<InstanceId>,
    /// The controller's epoch when it wrote this (its leader key's revision in etcd).
    pub epoch: u64,
    pub phase: RecordPhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordPhase {
    /// The active was lost or is being moved: hold requests.
    Promoting,
    /// `active` runs flows (confirmed): route to it.
    Serving,
}

/// How this flowgate takes part in decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No `cluster:` configured: it decides alone.
    Alone,
    /// Another replica controls (or none does yet): route by the record, change nothing.
    Follower,
    /// This replica holds the leadership with `epoch`: it alone changes flow state.
    Controller { epoch: u64 },
}

/// Why an operator command (switchover, restart, rolling restart) was refused or did not
/// complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("a promotion is already in progress; try again shortly")]
    Busy,
    #[error("a rolling restart is in progress; wait for it to end (see /status)")]
    Rolling,
    #[error("no backend \"{id}\"; known: {known}")]
    Unknown { id: InstanceId, known: String },
    #[error("backend \"{id}\" is not eligible: {why}")]
    NotEligible { id: InstanceId, why: String },
    #[error("no eligible standby")]
    NoStandby,
    #[error(transparent)]
    Failed(#[from] PromotionError),
    #[error("flowgate is shutting down")]
    ShuttingDown,
    #[error("this replica is not the controller: send it to the controller (see /status)")]
    NotController,
    #[error("backend \"{0}\" has no restart command (set backends[].restart.command)")]
    NoRestartCommand(InstanceId),
    #[error("\"{0}\" is the active instance: switch over first, or use a rolling restart")]
    IsActive(InstanceId),
    #[error("\"{0}\" is the only instance in rotation: restarting it would stop all traffic")]
    LastInRotation(InstanceId),
    #[error("\"{0}\" is being restarted already")]
    Restarting(InstanceId),
    #[error("restart of {id} failed: {why}")]
    Restart { id: InstanceId, why: String },
    #[error("load-balanced mode has no active role to move: every in-step instance runs flows")]
    Balanced,
    #[error("rolling restart not started: {0}")]
    RollingRefused(String),
    #[error("rolling restart stopped: {0}")]
    RollingFailed(String),
}

/// Why a promotion failed; the target cools down and the election runs again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromotionError {
    /// Another instance reports flows running and refused to stop them.
    #[error("cannot stop flows on {id}, which reports them running: {error}")]
    StopRefused { id: InstanceId, error: CallError },
    #[error("{0} went down during the promotion")]
    TargetDown(InstanceId),
    #[error("start on {id}: {error}")]
    Start { id: InstanceId, error: CallError },
}

/// What the core is told.
#[derive(Debug, Clone)]
pub enum Event {
    /// One probe round of an instance.
    Probe { id: InstanceId, report: Report },
    /// How each instance stands against the target (after deploys and resyncs changed it).
    Steps(Vec<(InstanceId, Sync)>),
    /// Operator: move the active role (`to: None` picks the best standby). Answered with
    /// [`Effect::Reply`] carrying the same ticket.
    Switchover { to: Option<InstanceId>, ticket: u64 },
    /// A timer the core asked for ([`State::next_wake`]) is due.
    Tick,
    /// Result of [`Effect::TakeChangeLock`]: `false` when it stayed busy.
    ChangeLockTaken { got: bool },
    /// Result of [`Effect::StopFlows`].
    Stopped { id: InstanceId, purpose: StopFor, result: Result<(), CallError> },
    /// Result of [`Effect::StartFlows`].
    Started { id: InstanceId, result: Result<(), CallError> },
    /// Result of [`Effect::Resync`].
    Synced { id: InstanceId, outcome: SyncOutcome },
    /// Replicas: this replica became controller with `Some(epoch)`, or is not (any more).
    Leadership(Option<u64>),
    /// Replicas: the active record as stored (watched).
    Record(Record),
    /// Operator: restart a (non-active) instance with its command. Answered with
    /// [`Effect::Reply`] once it is back (up, stopped, in step) or the restart failed.
    Restart { id: InstanceId, ticket: u64 },
    /// Result of [`Effect::Restart`]: the command's outcome (`Err` carries why it failed).
    Restarted { id: InstanceId, result: Result<(), String> },
    /// Operator: restart every instance, standbys first, with one switchover.
    RollingRestart { ticket: u64 },
}

/// What the core asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The active lost its role: fence traffic bound to it (in-flight requests are released
    /// when `failed`; websockets always close).
    Release {
        id: InstanceId,
        failed: bool,
    },
    /// Publish the routing view: the active, or none (requests are held).
    Route(Option<InstanceId>),
    /// Load-balanced mode: publish the rotation (none: requests are held).
    Rotation(Vec<InstanceId>),
    /// Fence the current holder of the change lock and take it (promotions). Answered with
    /// [`Event::ChangeLockTaken`].
    TakeChangeLock,
    ReleaseChangeLock,
    /// `POST flows/state stop`, confirmed from the body. Answered with [`Event::Stopped`].
    StopFlows {
        id: InstanceId,
        timeout: Duration,
        purpose: StopFor,
        /// It was the active until this planned move: its requests still in flight finish
        /// first (bounded), so none is answered by an instance whose flows are stopping.
        drain: bool,
        /// The controller epoch the command carries (replicas); fenced at Node-RED.
        epoch: Option<u64>,
    },
    /// `POST flows/state start`, confirmed. Answered with [`Event::Started`].
    StartFlows {
        id: InstanceId,
        timeout: Duration,
        epoch: Option<u64>,
    },
    /// Bring `id` in step with the target, from `source`'s flows (else the remembered ones);
    /// `locked`: the promotion holds the change lock already. Answered with [`Event::Synced`].
    Resync {
        id: InstanceId,
        source: Option<InstanceId>,
        locked: bool,
    },
    /// It came back: what it holds must be checked again (an in-step mark is forgotten).
    Recheck(InstanceId),
    /// Answer to a [`Event::Switchover`].
    Reply {
        ticket: u64,
        result: Result<String, CommandError>,
    },
    /// Replicas: store the active record, guarded by this replica's leadership; a write that
    /// fails because the leadership is gone comes back as `Leadership(None)`.
    Publish(Record),
    /// Replicas: tell the controller that `id` looks failed from here (it probes at once).
    Suspect(InstanceId),
    /// Run `id`'s restart command. Answered with [`Event::Restarted`].
    Restart {
        id: InstanceId,
        reason: RestartReason,
    },
    /// Something to log and count.
    Notice(Notice),
}

/// Transitions worth a log line or a metric. Each is emitted once, never per probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Up {
        id: InstanceId,
        flow_state: Option<FlowState>,
    },
    Down {
        id: InstanceId,
        error: Option<CallError>,
    },
    /// runtimeState is disabled: flowgate can never start or stop its flows.
    Unmanageable {
        id: InstanceId,
    },
    CanaryFailing {
        id: InstanceId,
        error: CallError,
    },
    ActiveLost {
        id: InstanceId,
        reason: Reason,
    },
    NoCandidate,
    Promoting {
        id: InstanceId,
        reason: Reason,
        stopping: usize,
    },
    /// The change lock stayed busy; the promotion goes on without it.
    LockBusy,
    /// An instance did not answer a promotion's stop: it stays fenced until it does.
    StopUnanswered {
        id: InstanceId,
    },
    /// The promotion waits for the dead-man switch of instances it could not stop.
    AwaitingDeadman {
        ids: Vec<InstanceId>,
        wait: Duration,
    },
    ResyncedBeforePromotion {
        id: InstanceId,
        error: Option<String>,
    },
    /// The promotion ended: `Ok` when traffic switched to `to`. `elapsed` runs from the loss of
    /// the previous active (or the promotion's start).
    Promotion {
        from: Option<InstanceId>,
        to: InstanceId,
        reason: Reason,
        elapsed: Duration,
        result: Result<(), PromotionError>,
    },
    StrayStopped {
        id: InstanceId,
        was: FlowState,
    },
    StrayStopFailed {
        id: InstanceId,
        error: CallError,
    },
    Resynced {
        id: InstanceId,
        result: Result<(), String>,
    },
    /// It went down again and again: passed over while anything else is eligible.
    Flapping {
        id: InstanceId,
    },
    /// Replicas: this replica became controller (`Some(epoch)`) or stepped down (`None`).
    Leadership {
        epoch: Option<u64>,
    },
    /// Replicas: the leadership was lost during a promotion; nothing more is sent for it.
    PromotionAbandoned {
        to: InstanceId,
    },
    /// A restart command is being run.
    Restarting {
        id: InstanceId,
        reason: RestartReason,
    },
    /// A restart ended: `Ok` once the instance was back up, stopped and in step.
    Restart {
        id: InstanceId,
        reason: RestartReason,
        result: Result<(), String>,
    },
    /// It failed again after `restarts` automatic restarts within the window: left down until
    /// an operator restarts it.
    RecoveryExhausted {
        id: InstanceId,
        restarts: usize,
    },
    /// A rolling restart moved on (`Ok`: progress or done) or stopped (`Err`).
    Rolling(Result<String, String>),
    /// Load-balanced mode: it joined the rotation, or left it (or could not join), and why.
    Rotation {
        id: InstanceId,
        joined: bool,
        why: String,
    },
}
