//! The core's rules as event scripts: each test reads like the scenario it guards and asserts
//! the effects in order. `actions` renders effects as short words ("stop b", "start a",
//! "route a"); notices are asserted separately where they matter.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::*;

pub(super) const MS: Duration = Duration::from_millis(1);

pub(super) fn settings() -> Settings {
    Settings {
        rise: 2,
        fall: 2,
        interval: 500 * MS,
        timeout: 400 * MS,
        promotion_grace: 2000 * MS,
        failback: false,
        failback_delay: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(15),
        start_timeout: Duration::from_secs(15),
        recovery: crate::config::RecoveryConfig {
            automatic: true,
            hung_for: Duration::from_secs(5),
            down_for: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            max_restarts: 3,
            window: Duration::from_secs(600),
            backoff: Duration::from_secs(10),
        },
        deadman: None,
        replicated: false,
        balanced: false,
    }
}

pub(super) fn id(s: &str) -> InstanceId {
    InstanceId::from(s)
}

pub(super) fn specs(list: &[(&str, i64)]) -> Vec<Spec> {
    list.iter()
        .map(|&(n, p)| Spec { id: id(n), address: format!("http://{n}:1880"), priority: p, restartable: false })
        .collect()
}

pub(super) fn report(state: Result<FlowState, CallError>) -> Report {
    Report { at: SystemTime::UNIX_EPOCH, latency: MS, state, runtime_state: Some(Ok(true)), canary: None }
}

/// Effects as words; notices and rechecks left out.
pub(super) fn actions(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| {
            Some(match e {
                Effect::Release { id, failed } => format!("release {id}{}", if *failed { " failed" } else { "" }),
                Effect::Route(Some(id)) => format!("route {id}"),
                Effect::Route(None) => "route -".into(),
                Effect::Rotation(ids) => {
                    format!("rotation {}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","))
                }
                Effect::TakeChangeLock => "lock".into(),
                Effect::ReleaseChangeLock => "unlock".into(),
                Effect::StopFlows { id, purpose: StopFor::Stray, .. } => format!("stop stray {id}"),
                Effect::StopFlows { id, .. } => format!("stop {id}"),
                Effect::StartFlows { id, .. } => format!("start {id}"),
                Effect::Resync { id, locked: true, .. } => format!("resync {id} locked"),
                Effect::Resync { id, .. } => format!("resync {id}"),
                Effect::Reply { result: Ok(_), .. } => "reply ok".into(),
                Effect::Reply { result: Err(_), .. } => "reply error".into(),
                Effect::Publish(r) => format!(
                    "publish {} {}@{}",
                    r.active.as_ref().map_or("-".to_string(), |a| a.to_string()),
                    match r.phase {
                        RecordPhase::Serving => "serving",
                        RecordPhase::Promoting => "promoting",
                    },
                    r.epoch
                ),
                Effect::Suspect(id) => format!("suspect {id}"),
                Effect::Restart { id, .. } => format!("restart {id}"),
                Effect::Notice(_) | Effect::Recheck(_) => return None,
            })
        })
        .collect()
}

pub(super) fn notices(fx: &[Effect]) -> Vec<Notice> {
    fx.iter().filter_map(|e| if let Effect::Notice(n) = e { Some(n.clone()) } else { None }).collect()
}

/// Only flow-state and routing actions: what break-before-make is about.
pub(super) fn moves(fx: &[Effect]) -> Vec<String> {
    actions(fx)
        .into_iter()
        .filter(|a| a.starts_with("stop") || a.starts_with("start") || a.starts_with("route"))
        .collect()
}

pub(super) struct Script {
    pub(super) core: State,
    pub(super) now: Instant,
}

impl Script {
    pub(super) fn new(list: &[(&str, i64)]) -> Self {
        Self::with(list, settings())
    }

    pub(super) fn with(list: &[(&str, i64)], s: Settings) -> Self {
        Self::of(specs(list), s)
    }

    pub(super) fn of(specs: Vec<Spec>, s: Settings) -> Self {
        let now = Instant::now();
        Script { core: State::new(specs, s, now), now }
    }

    pub(super) fn send(&mut self, e: Event) -> Vec<Effect> {
        self.core.step(e, self.now)
    }

    pub(super) fn probe(&mut self, n: &str, state: Result<FlowState, CallError>) -> Vec<Effect> {
        self.send(Event::Probe { id: id(n), report: report(state) })
    }

    pub(super) fn up(&mut self, n: &str, s: FlowState) -> Vec<Effect> {
        self.probe(n, Ok(s))
    }

    pub(super) fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.send(Event::Tick)
    }

    pub(super) fn locked(&mut self) -> Vec<Effect> {
        self.send(Event::ChangeLockTaken { got: true })
    }

    pub(super) fn stopped(&mut self, n: &str, result: Result<(), CallError>) -> Vec<Effect> {
        self.send(Event::Stopped { id: id(n), purpose: StopFor::Promotion, result })
    }

    pub(super) fn started(&mut self, n: &str) -> Vec<Effect> {
        self.send(Event::Started { id: id(n), result: Ok(()) })
    }

    pub(super) fn all_in_step(&mut self) {
        let steps = self.core.members().iter().map(|m| (m.spec.id.clone(), Sync::InStep)).collect();
        self.send(Event::Steps(steps));
    }

    /// a (priority 200) active, b standby, both in step.
    pub(super) fn serving_a() -> Self {
        let mut s = Script::new(&[("a", 200), ("b", 100)]);
        s.up("a", FlowState::Stop);
        assert_eq!(actions(&s.up("b", FlowState::Stop)), ["lock"]);
        assert_eq!(actions(&s.locked()), ["stop b"]);
        assert_eq!(actions(&s.stopped("b", Ok(()))), ["start a"]);
        assert_eq!(actions(&s.started("a")), ["unlock", "route a", "resync a", "resync b"]);
        // As the driver sees it: the table says in step, then the results arrive.
        s.all_in_step();
        for n in ["a", "b"] {
            assert!(moves(&s.send(Event::Synced { id: id(n), outcome: SyncOutcome::InStep })).is_empty());
        }
        assert_eq!(s.core.active(), Some(&id("a")));
        s
    }
}

#[test]
fn first_election_waits_for_every_instance_then_stops_before_it_starts() {
    let mut s = Script::new(&[("a", 200), ("b", 100)]);
    let fx = s.up("a", FlowState::Stop);
    assert_eq!(actions(&fx), Vec::<String>::new(), "waits for b");
    assert!(fx.contains(&Effect::Recheck(id("a"))), "what a holds is checked again");
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["lock"]);
    assert_eq!(s.core.phase(), Phase::Promoting);
    assert_eq!(actions(&s.locked()), ["stop b"], "nothing starts before b confirmed its stop");
    assert_eq!(actions(&s.stopped("b", Ok(()))), ["start a"]);
    assert_eq!(actions(&s.started("a")), ["unlock", "route a", "resync a", "resync b"]);
    assert_eq!(s.core.phase(), Phase::Serving);
}

#[test]
fn without_answers_the_first_election_happens_when_the_start_up_window_ends() {
    let mut s = Script::new(&[("a", 200), ("b", 100)]);
    s.up("b", FlowState::Stop);
    assert_eq!(actions(&s.advance(1000 * MS)), Vec::<String>::new(), "still inside 2 × interval + timeout");
    assert_eq!(actions(&s.advance(400 * MS)), ["lock"]);
}

#[test]
fn an_instance_already_running_flows_is_adopted() {
    let mut s = Script::new(&[("a", 200), ("b", 100)]);
    s.up("a", FlowState::Stop);
    assert!(actions(&s.up("b", FlowState::Start)).is_empty(), "one reading: it may be booting stopped");
    assert_eq!(actions(&s.up("b", FlowState::Start)), ["lock"]);
    assert_eq!(actions(&s.locked()), ["stop a"]);
    assert_eq!(actions(&s.stopped("a", Ok(()))), ["start b"]);
}

#[test]
fn crash_of_the_active_releases_its_traffic_and_promotes_the_standby() {
    let mut s = Script::serving_a();
    let fx = s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&fx), ["release a failed", "route -", "lock"]);
    assert!(notices(&fx).contains(&Notice::ActiveLost { id: id("a"), reason: Reason::Crash }));
    assert_eq!(actions(&s.locked()), ["start b"], "a is down: nothing to stop");
    let fx = s.started("b");
    assert_eq!(moves(&fx), ["route b"]);
    let Some(Notice::Promotion { from, reason, result, .. }) =
        notices(&fx).into_iter().find(|n| matches!(n, Notice::Promotion { .. }))
    else {
        panic!("no promotion notice")
    };
    assert_eq!((from, reason, result), (Some(id("a")), Reason::Crash, Ok(())));
}

#[test]
fn a_hang_needs_fall_timeouts_and_is_reported_as_a_hang() {
    let mut s = Script::serving_a();
    s.advance(3000 * MS); // past the promotion grace
    let timeout = || Err(CallError::Timeout(400 * MS));
    assert_eq!(actions(&s.probe("a", timeout())), Vec::<String>::new(), "one timeout is not enough");
    let fx = s.probe("a", timeout());
    assert_eq!(actions(&fx), ["release a failed", "route -", "lock"]);
    assert!(notices(&fx).contains(&Notice::ActiveLost { id: id("a"), reason: Reason::Hang }));
}

#[test]
fn flowgate_running_out_of_file_descriptors_is_not_the_instances_failure() {
    let mut s = Script::serving_a();
    s.advance(3000 * MS);
    for _ in 0..5 {
        let local = Err(CallError::Local("Too many open files (os error 24)".into()));
        assert_eq!(actions(&s.probe("a", local)), Vec::<String>::new(), "no observation");
    }
    assert_eq!(s.core.active(), Some(&id("a")));
    let timeout = || Err(CallError::Timeout(400 * MS));
    s.probe("a", timeout());
    assert_eq!(actions(&s.probe("a", timeout()))[0], "release a failed", "real failures still count");
}

#[test]
fn timeouts_of_a_just_promoted_active_are_forgiven_during_the_grace() {
    let mut s = Script::serving_a();
    for _ in 0..5 {
        assert_eq!(actions(&s.probe("a", Err(CallError::Timeout(400 * MS)))), Vec::<String>::new());
    }
    assert_eq!(s.core.active(), Some(&id("a")));
}

#[test]
fn a_rebooted_instance_running_its_flows_is_stopped_at_its_first_answer() {
    let mut s = Script::serving_a();
    s.probe("b", Err(CallError::Refused));
    let fx = s.up("b", FlowState::Start);
    assert_eq!(actions(&fx), ["stop stray b"], "before rise: stopping a non-active instance is always safe");
    assert_eq!(s.core.role(&id("b")), Role::Down, "rise still governs the rest");
    let fx = s.up("b", FlowState::Start); // rise = 2
    assert_eq!(actions(&fx), ["resync b"], "the stop is in flight: not sent twice");
    assert_eq!(s.core.active(), Some(&id("a")), "the active is kept");
    let fx = s.send(Event::Stopped { id: id("b"), purpose: StopFor::Stray, result: Ok(()) });
    assert!(notices(&fx).contains(&Notice::StrayStopped { id: id("b"), was: FlowState::Start }));
    assert_eq!(actions(&s.up("b", FlowState::Stop)), Vec::<String>::new(), "stopped once, not again");
}

#[test]
fn a_probe_that_read_the_flows_before_their_stop_does_not_stop_them_again() {
    let mut s = Script::serving_a();
    assert_eq!(actions(&s.up("b", FlowState::Start)), ["stop stray b"]);
    s.send(Event::Stopped { id: id("b"), purpose: StopFor::Stray, result: Ok(()) });
    // A probe on its way during the stop still reads "start": not believed.
    assert_eq!(actions(&s.up("b", FlowState::Start)), Vec::<String>::new());
    assert_eq!(s.core.members()[1].flow_state, Some(FlowState::Stop));
    assert_eq!(s.core.members()[1].start_readings, 0, "nor counted as a reading of started flows");
    // Later (past one probe timeout) "start" is news: the instance runs flows again.
    s.advance(1000 * MS);
    assert_eq!(actions(&s.up("b", FlowState::Start)), ["stop stray b"]);
}

#[test]
fn a_failed_stray_stop_is_retried_later_not_at_every_probe() {
    let mut s = Script::serving_a();
    s.up("b", FlowState::Start);
    s.send(Event::Stopped { id: id("b"), purpose: StopFor::Stray, result: Err(CallError::Status(500, "x".into())) });
    assert_eq!(actions(&s.up("b", FlowState::Start)), Vec::<String>::new());
    assert_eq!(actions(&s.advance(5000 * MS)), ["stop stray b"]);
}

#[test]
fn a_flapping_instance_is_never_promoted_while_the_active_is_healthy() {
    let mut s = Script::serving_a();
    for _ in 0..10 {
        for fx in [s.probe("b", Err(CallError::Refused)), s.up("b", FlowState::Stop), s.up("b", FlowState::Stop)] {
            assert!(moves(&fx).is_empty(), "{fx:?}");
        }
        s.advance(1500 * MS);
    }
    assert_eq!(s.core.active(), Some(&id("a")));
}

#[test]
fn failback_waits_for_a_stable_preferred_instance() {
    let mut st = settings();
    st.failback = true;
    let mut s = Script::with(&[("a", 200), ("b", 100)], st);
    s.probe("a", Err(CallError::Refused));
    s.up("b", FlowState::Start);
    s.up("b", FlowState::Start);
    s.locked();
    assert_eq!(moves(&s.started("b")), ["route b"]);
    // a comes back at t0, then flaps at t0 + 30 s: the delay counts from its last return.
    s.up("a", FlowState::Stop);
    s.up("a", FlowState::Stop);
    s.advance(Duration::from_secs(30));
    s.probe("a", Err(CallError::Refused));
    s.up("a", FlowState::Stop);
    assert!(moves(&s.up("a", FlowState::Stop)).is_empty());
    assert_eq!(s.core.next_wake(s.now), Some(s.now + Duration::from_secs(60)));
    assert!(moves(&s.advance(Duration::from_secs(59))).is_empty());
    let fx = s.advance(Duration::from_secs(1));
    assert_eq!(actions(&fx), ["release b", "route -", "lock"], "planned: in-flight requests finish");
    assert_eq!(actions(&s.locked()), ["stop b"]);
    assert_eq!(actions(&s.stopped("b", Ok(()))), ["start a"]);
}

#[test]
fn a_switchover_waits_for_the_change_lock_held_by_a_deploy() {
    let mut s = Script::serving_a();
    let fx = s.send(Event::Switchover { to: Some(id("b")), ticket: 7 });
    assert_eq!(actions(&fx), ["release a", "route -", "lock"]);
    // Probes go on; nothing moves until the lock is answered.
    assert!(moves(&s.up("a", FlowState::Start)).is_empty());
    assert_eq!(actions(&s.send(Event::Switchover { to: None, ticket: 8 })), ["reply error"], "one at a time");
    let fx = s.send(Event::ChangeLockTaken { got: false });
    assert!(notices(&fx).contains(&Notice::LockBusy));
    assert_eq!(actions(&fx), ["stop a"]);
    assert!(
        matches!(&fx[..], [.., Effect::StopFlows { drain: true, .. }]),
        "the old active's requests in flight finish before its flows stop: {fx:?}"
    );
    assert_eq!(actions(&s.stopped("a", Ok(()))), ["start b"]);
    let fx = s.started("b");
    assert!(fx.contains(&Effect::Reply { ticket: 7, result: Ok("b is active".into()) }));
    assert_eq!(s.core.member(&id("a")).unwrap().flow_state, Some(FlowState::Stop));
}

#[test]
fn switchover_to_an_unknown_or_ineligible_instance_is_refused_with_the_reason() {
    let mut s = Script::serving_a();
    let reply = |fx: Vec<Effect>| match &fx[..] {
        [Effect::Reply { result: Err(e), .. }] => e.clone(),
        other => panic!("{other:?}"),
    };
    let e = reply(s.send(Event::Switchover { to: Some(id("z")), ticket: 1 }));
    assert_eq!(e, CommandError::Unknown { id: id("z"), known: "a, b".into() });
    assert_eq!(e.to_string(), "no backend \"z\"; known: a, b");
    s.probe("b", Err(CallError::Refused));
    let e = reply(s.send(Event::Switchover { to: Some(id("b")), ticket: 2 }));
    assert!(matches!(&e, CommandError::NotEligible { why, .. } if why.contains("connection refused")), "{e}");
    assert_eq!(reply(s.send(Event::Switchover { to: None, ticket: 3 })), CommandError::NoStandby);
}

#[test]
fn an_instance_that_cannot_stop_its_running_flows_blocks_the_promotion() {
    let mut s = Script::serving_a();
    s.send(Event::Switchover { to: Some(id("b")), ticket: 1 });
    s.locked();
    let fx = s.stopped("a", Err(CallError::Status(500, "boom".into())));
    assert_eq!(actions(&fx), ["unlock", "reply error", "stop stray a"], "never start b while a may still run");
    assert_eq!(s.core.active(), None);
    // After the retry pause the election runs again; b cools down after its failed
    // promotion, so a is chosen again.
    assert!(moves(&s.advance(100 * MS)).is_empty());
    assert_eq!(actions(&s.advance(100 * MS)), ["lock"]);
}

#[test]
fn an_unreachable_instance_is_fenced_and_the_promotion_goes_on() {
    let mut s = Script::serving_a();
    s.send(Event::Switchover { to: Some(id("b")), ticket: 1 });
    s.locked();
    let fx = s.stopped("a", Err(CallError::Timeout(15 * 1000 * MS)));
    assert!(notices(&fx).contains(&Notice::StopUnanswered { id: id("a") }));
    assert_eq!(actions(&fx), ["start b"]);
}

#[test]
fn a_stop_flowgate_could_not_even_send_blocks_the_promotion() {
    // Out of file descriptors says nothing about the instance: it most likely still runs.
    let mut s = Script::serving_a();
    s.send(Event::Switchover { to: Some(id("b")), ticket: 1 });
    s.locked();
    let fx = s.stopped("a", Err(CallError::Local("Too many open files (os error 24)".into())));
    assert_eq!(actions(&fx), ["unlock", "reply error", "stop stray a"], "never start b while a may still run");
    assert_eq!(s.core.active(), None);
}

#[test]
fn an_out_of_step_candidate_is_resynced_under_the_lock_before_its_flows_start() {
    let mut s = Script::serving_a();
    s.send(Event::Steps(vec![(id("b"), Sync::OutOfStep)]));
    s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&s.locked()), ["resync b locked"]);
    let fx = s.send(Event::Synced { id: id("b"), outcome: SyncOutcome::Resynced });
    assert_eq!(actions(&fx), ["start b"]);
}

#[test]
fn an_in_step_standby_is_preferred_over_an_out_of_step_one() {
    let mut s = Script::new(&[("a", 300), ("b", 200), ("c", 100)]);
    s.send(Event::Steps(vec![(id("a"), Sync::OutOfStep), (id("b"), Sync::OutOfStep)]));
    s.up("a", FlowState::Stop);
    s.up("b", FlowState::Stop);
    s.up("c", FlowState::Stop);
    s.locked();
    s.stopped("a", Ok(()));
    assert_eq!(actions(&s.stopped("b", Ok(()))), ["start c"]);
}

#[test]
fn a_reload_keeps_the_active_and_never_promotes_an_added_instance_on_sight() {
    let mut s = Script::serving_a();
    let old = s.core.clone();
    assert!(!old.busy());
    s.core = State::reconfigured(old, specs(&[("a", 200), ("c", 500)]), settings(), s.now);
    assert_eq!(s.core.active(), Some(&id("a")));
    assert_eq!(s.core.role(&id("a")), Role::Active);
    assert!(s.core.member(&id("b")).is_none(), "removed");
    let fx = s.up("c", FlowState::Stop);
    assert!(moves(&fx).is_empty(), "{fx:?}");
    assert_eq!(s.core.role(&id("c")), Role::Standby);
}

#[test]
fn a_reload_that_moves_an_instance_forgets_what_was_known_about_it() {
    let s = Script::serving_a();
    let mut moved = specs(&[("a", 200), ("b", 100)]);
    moved[1].address = "http://elsewhere:1880".into();
    let core = State::reconfigured(s.core.clone(), moved, settings(), s.now);
    assert_eq!(core.member(&id("b")).unwrap().health(), crate::control::health::Health::Unknown);
    assert_eq!(core.member(&id("a")).unwrap().health(), crate::control::health::Health::Up);
}

#[test]
fn a_failing_canary_moves_the_active_only_when_another_is_eligible() {
    let mut s = Script::serving_a();
    s.advance(3000 * MS);
    let canary = |s: &mut Script| {
        let mut r = report(Ok(FlowState::Start));
        r.canary = Some(Err(CallError::Status(404, "Cannot GET".into())));
        s.send(Event::Probe { id: id("a"), report: r })
    };
    assert!(moves(&canary(&mut s)).is_empty());
    let fx = canary(&mut s);
    assert_eq!(actions(&fx), ["release a", "route -", "lock"], "fall = 2; a is not failed, only demoted");
    assert!(notices(&fx).contains(&Notice::ActiveLost { id: id("a"), reason: Reason::Canary }));
}

#[test]
fn disabling_runtime_state_makes_an_instance_unmanageable() {
    let mut s = Script::serving_a();
    let mut r = report(Ok(FlowState::Stop));
    r.runtime_state = Some(Ok(false));
    let fx = s.send(Event::Probe { id: id("b"), report: r.clone() });
    assert!(notices(&fx).contains(&Notice::Unmanageable { id: id("b") }));
    assert_eq!(s.core.role(&id("b")), Role::Unmanageable);
    assert!(notices(&s.send(Event::Probe { id: id("b"), report: r })).is_empty(), "said once");
}

#[test]
fn a_target_that_goes_down_during_its_promotion_is_never_told_to_start() {
    let mut s = Script::serving_a();
    s.send(Event::Switchover { to: Some(id("b")), ticket: 1 });
    s.locked();
    s.advance(3000 * MS);
    for _ in 0..2 {
        s.probe("b", Err(CallError::Timeout(400 * MS)));
    }
    let fx = s.stopped("a", Ok(()));
    assert_eq!(actions(&fx), ["unlock", "reply error"], "no start for a hung target");
    assert!(
        matches!(&notices(&fx)[..], [Notice::Promotion { result: Err(PromotionError::TargetDown(t)), .. }] if *t == id("b"))
    );
}

#[test]
fn a_slow_first_answer_does_not_cost_the_preferred_instance_the_first_election() {
    let mut s = Script::new(&[("a", 200), ("b", 100)]);
    assert!(actions(&s.probe("a", Err(CallError::Timeout(400 * MS)))).is_empty());
    assert!(actions(&s.up("b", FlowState::Stop)).is_empty(), "a is undecided yet: wait for it");
    assert_eq!(actions(&s.up("a", FlowState::Stop)), ["lock"]);
    assert_eq!(actions(&s.locked()), ["stop b"], "a is the one promoted");
}

/// b crash-loops: down three times within a minute.
fn crash_loop(s: &mut Script, n: &str) {
    for _ in 0..3 {
        s.probe(n, Err(CallError::Refused));
        s.up(n, FlowState::Stop);
        s.up(n, FlowState::Stop);
        s.advance(Duration::from_secs(2));
    }
}

#[test]
fn a_crash_looping_standby_is_passed_over_while_a_stable_one_exists() {
    let mut s = Script::new(&[("a", 300), ("b", 200), ("c", 100)]);
    for n in ["a", "b", "c"] {
        s.up(n, FlowState::Stop);
    }
    s.locked();
    s.stopped("b", Ok(()));
    s.stopped("c", Ok(()));
    s.started("a");
    s.all_in_step();
    crash_loop(&mut s, "b");
    assert!(s.core.member(&id("b")).unwrap().flapping(s.now));
    s.advance(Duration::from_secs(3));
    s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&s.locked()), ["stop b"], "c is promoted, though b has the higher priority");
    assert_eq!(actions(&s.stopped("b", Ok(()))), ["start c"]);
}

#[test]
fn a_flapping_instance_is_never_failed_back_to_until_it_is_stable() {
    let mut st = settings();
    st.failback = true;
    st.failback_delay = Duration::from_secs(10);
    let mut s = Script::with(&[("a", 200), ("b", 100)], st);
    s.up("a", FlowState::Stop);
    s.up("b", FlowState::Stop);
    assert_eq!(actions(&s.locked()), ["stop b"]);
    s.stopped("b", Ok(()));
    s.started("a");
    s.all_in_step();
    // a crashes: b takes over.
    s.advance(Duration::from_secs(3));
    s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&s.locked()), ["start b"]);
    assert_eq!(moves(&s.started("b")), ["route b"]);
    // a comes back and crashes twice more within a minute: it is flapping.
    for _ in 0..2 {
        s.up("a", FlowState::Stop);
        s.up("a", FlowState::Stop);
        s.advance(Duration::from_secs(2));
        s.probe("a", Err(CallError::Refused));
    }
    s.up("a", FlowState::Stop);
    s.up("a", FlowState::Stop);
    assert!(s.core.member(&id("a")).unwrap().flapping(s.now));
    assert!(moves(&s.advance(Duration::from_secs(15))).is_empty(), "no failback to a flapping instance");
    // A minute after its third down it counts as stable, and the failback goes ahead.
    let fx = s.advance(Duration::from_secs(46));
    assert_eq!(actions(&fx), ["release b", "route -", "lock"]);
}

#[test]
fn a_start_reading_while_an_instance_boots_stopped_does_not_win_the_first_election() {
    let mut s = Script::new(&[("a", 200), ("b", 100)]);
    s.up("a", FlowState::Stop);
    assert!(actions(&s.up("b", FlowState::Start)).is_empty(), "wait for b's next reading");
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["lock"]);
    assert_eq!(actions(&s.locked()), ["stop b"], "a is promoted, by priority");
}
