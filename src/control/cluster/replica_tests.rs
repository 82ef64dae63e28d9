//! The replica rules as event scripts (see `replica.rs`): followers route by the record and
//! change nothing; the controller writes the record before it routes; a new controller keeps
//! what runs; a deposed controller stops mid-promotion.

use std::time::Duration;

use super::tests::{MS, Script, actions, id, moves, notices, settings};
use super::*;

fn record(active: Option<&str>, epoch: u64, phase: RecordPhase) -> Event {
    Event::Record(Record { active: active.map(id), epoch, phase })
}

fn serving(active: &str, epoch: u64) -> Event {
    record(Some(active), epoch, RecordPhase::Serving)
}

/// Two replicated instances, both probed up and stopped; this replica follows.
fn follower() -> Script {
    let mut st = settings();
    st.replicated = true;
    let mut s = Script::with(&[("a", 200), ("b", 100)], st);
    assert!(actions(&s.up("a", FlowState::Stop)).is_empty());
    assert!(actions(&s.up("b", FlowState::Stop)).is_empty(), "a follower never elects");
    assert!(actions(&s.advance(Duration::from_secs(5))).is_empty(), "not even after the start-up window");
    s
}

#[test]
fn a_follower_routes_by_the_record_and_changes_no_flow_state() {
    let mut s = follower();
    assert!(actions(&s.up("b", FlowState::Start)).is_empty(), "not even a stray stop");
    assert_eq!(actions(&s.send(serving("a", 5))), ["route a"]);
    assert_eq!(s.core.active(), Some(&id("a")));
    assert_eq!(actions(&s.send(record(None, 5, RecordPhase::Promoting))), ["release a", "route -"]);
    assert_eq!(actions(&s.send(serving("b", 5))), ["route b"]);
    let fx = s.send(Event::Switchover { to: Some(id("a")), ticket: 1 });
    assert_eq!(fx, [Effect::Reply { ticket: 1, result: Err(CommandError::NotController) }]);
}

#[test]
fn a_follower_that_sees_the_recorded_active_fail_holds_traffic_and_tells_the_controller() {
    let mut s = follower();
    s.send(serving("a", 5));
    let fx = s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&fx), ["suspect a", "release a failed", "route -"]);
    // The controller has not moved the record yet, and a is back (a partition healed).
    s.up("a", FlowState::Start);
    assert_eq!(actions(&s.up("a", FlowState::Start)), ["route a"]);
    // A standby failing is not the controller's urgent business.
    assert!(actions(&s.probe("b", Err(CallError::Refused))).is_empty());
}

#[test]
fn a_record_of_an_older_controller_seen_late_is_ignored() {
    let mut s = follower();
    s.send(serving("b", 9));
    assert!(actions(&s.send(serving("a", 8))).is_empty());
    assert_eq!(s.core.record().map(|r| r.epoch), Some(9));
}

#[test]
fn a_new_controller_keeps_what_runs_and_writes_the_record_under_its_epoch() {
    let mut s = follower();
    s.send(serving("a", 5));
    let fx = s.send(Event::Leadership(Some(7)));
    assert_eq!(actions(&fx)[0], "publish a serving@7");
    assert!(moves(&fx).is_empty(), "no failover on a change of controller: {fx:?}");
    assert!(notices(&fx).contains(&Notice::Leadership { epoch: Some(7) }));
    assert!(moves(&s.advance(Duration::from_secs(5))).is_empty());
    assert_eq!(s.core.active(), Some(&id("a")));
    // Its commands carry its epoch; the record says "promoting" before anything moves and
    // "serving" only once the new active's flows are confirmed, before it routes there.
    s.advance(Duration::from_secs(3));
    let fx = s.probe("a", Err(CallError::Refused));
    assert_eq!(actions(&fx), ["release a failed", "publish - promoting@7", "route -", "lock"]);
    let fx = s.locked();
    assert!(matches!(&fx[..], [Effect::StartFlows { epoch: Some(7), .. }]), "{fx:?}");
    assert_eq!(actions(&s.started("b"))[..3], ["unlock", "publish b serving@7", "route b"]);
}

#[test]
fn a_controller_that_loses_the_leadership_abandons_its_promotion() {
    let mut s = follower();
    s.send(serving("a", 5));
    s.send(Event::Leadership(Some(7)));
    s.send(Event::Switchover { to: Some(id("b")), ticket: 3 });
    assert_eq!(actions(&s.locked()), ["stop a"]);
    let fx = s.send(Event::Leadership(None));
    assert!(fx.contains(&Effect::Reply { ticket: 3, result: Err(CommandError::NotController) }));
    assert!(notices(&fx).contains(&Notice::PromotionAbandoned { to: id("b") }));
    assert_eq!(actions(&fx)[0], "unlock");
    // The stop's answer arrives late: nothing is started for an abandoned promotion.
    assert!(moves(&s.stopped("a", Ok(()))).is_empty());
    assert_eq!(s.core.mode(), &Mode::Follower);
    // It follows the new controller's record.
    assert_eq!(actions(&s.send(serving("b", 9))), ["route b"]);
}

#[test]
fn a_controller_that_has_nothing_recorded_elects_as_a_single_flowgate_would() {
    let mut s = follower();
    let fx = s.send(Event::Leadership(Some(3)));
    assert_eq!(actions(&fx), ["lock"]);
    let fx = s.locked();
    assert!(matches!(&fx[..], [Effect::StopFlows { epoch: Some(3), .. }]), "{fx:?}");
    s.stopped("b", Ok(()));
    s.now += 10 * MS;
    assert_eq!(actions(&s.started("a"))[..3], ["unlock", "publish a serving@3", "route a"]);
}
