//! Health of one instance: a pure rise/fall threshold tracker (no clock, no I/O), and the
//! report one probe round produces. The probe loop itself is in `health/probe.rs`.

pub mod probe;
pub mod watch;

use std::time::{Duration, SystemTime};

use crate::backend::{CallError, FlowState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No probe has answered yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    BecameUp,
    BecameDown,
}

/// Consecutive-result thresholds. A first good result decides at once (so a restarted
/// flowgate elects quickly); a first bad one counts toward `fall` like any other, since a
/// freshly booted Node-RED can answer its first request slowly (a refused connection still
/// decides at once, through `force_down`). After that `rise` good results bring a down
/// instance up and `fall` bad ones take an up instance down.
#[derive(Debug, Clone)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    health: Health,
    run: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker { rise: rise.max(1), fall: fall.max(1), health: Health::Unknown, run: 0 }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        match (self.health, ok) {
            (Health::Unknown, true) => self.set(Health::Up),
            (Health::Unknown, false) => self.count(self.fall, Health::Down),
            (Health::Up, true) | (Health::Down, false) => {
                self.run = 0;
                None
            }
            (Health::Up, false) => self.count(self.fall, Health::Down),
            (Health::Down, true) => self.count(self.rise, Health::Up),
        }
    }

    /// A definitive failure (nothing listens on the port): down at once.
    pub fn force_down(&mut self) -> Option<Transition> {
        if self.health == Health::Down {
            self.run = 0;
            None
        } else {
            self.set(Health::Down)
        }
    }

    fn count(&mut self, threshold: u32, to: Health) -> Option<Transition> {
        self.run += 1;
        if self.run >= threshold { self.set(to) } else { None }
    }

    fn set(&mut self, to: Health) -> Option<Transition> {
        self.health = to;
        self.run = 0;
        Some(if to == Health::Up { Transition::BecameUp } else { Transition::BecameDown })
    }
}

/// What one probe round found out about an instance.
#[derive(Debug, Clone)]
pub struct Report {
    pub at: SystemTime,
    pub latency: Duration,
    /// `GET <admin>/flows/state`.
    pub state: Result<FlowState, CallError>,
    /// `runtimeState.enabled` from `GET <admin>/settings`, checked after each (re)connection.
    pub runtime_state: Option<Result<bool, CallError>>,
    /// The canary, probed on the active instance only.
    pub canary: Option<Result<(), CallError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.observe(true), Some(Transition::BecameUp));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::BecameDown));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::BecameUp));

        let mut t = Tracker::new(2, 2);
        assert_eq!(t.observe(false), None, "one slow first answer is not enough");
        assert_eq!(t.observe(false), Some(Transition::BecameDown));
        assert_eq!(t.health(), Health::Down);
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), Some(Transition::BecameUp), "then a good answer decides");
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.force_down(), Some(Transition::BecameDown), "nothing listening decides at once");
    }

    #[test]
    fn a_good_result_resets_the_failure_run() {
        let mut t = Tracker::new(1, 2);
        t.observe(true);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None, "run restarted after the good result");
        assert_eq!(t.observe(false), Some(Transition::BecameDown));
    }

    #[test]
    fn force_down_skips_the_threshold() {
        let mut t = Tracker::new(2, 5);
        t.observe(true);
        assert_eq!(t.force_down(), Some(Transition::BecameDown));
        assert_eq!(t.force_down(), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::BecameUp));
    }
}
