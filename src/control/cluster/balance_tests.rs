//! Load-balanced mode as event scripts: who is started, who enters and leaves the rotation.

use super::tests::{MS, Script, actions, id, settings};
use super::*;

fn balanced(list: &[(&str, i64)]) -> Script {
    Script::with(list, Settings { balanced: true, ..settings() })
}

fn synced(s: &mut Script, n: &str, step: Sync) -> Vec<Effect> {
    let mut fx = s.send(Event::Steps(vec![(id(n), step)]));
    let outcome = if step == Sync::InStep { SyncOutcome::InStep } else { SyncOutcome::Failed("x".into()) };
    fx.extend(s.send(Event::Synced { id: id(n), outcome }));
    fx
}

/// a (priority 200) and b, both started and in rotation.
fn both_serving() -> Script {
    let mut s = balanced(&[("a", 200), ("b", 100)]);
    assert!(actions(&s.up("a", FlowState::Stop)).is_empty(), "waits for b");
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["start a"], "the first by election, nothing stopped");
    assert_eq!(actions(&s.started("a")), ["rotation a", "resync a", "resync b"]);
    assert_eq!(s.core.phase(), Phase::Serving);
    synced(&mut s, "a", Sync::InStep);
    assert_eq!(actions(&synced(&mut s, "b", Sync::InStep)), ["start b"], "in step: started, then routed to");
    assert_eq!(actions(&s.started("b")), ["rotation a,b"]);
    assert_eq!(s.core.role(&id("b")), Role::Active);
    s
}

#[test]
fn every_in_step_instance_is_started_then_enters_the_rotation() {
    both_serving();
}

#[test]
fn instances_already_running_in_step_join_without_a_start() {
    let mut s = balanced(&[("a", 200), ("b", 100)]);
    s.up("a", FlowState::Start);
    s.up("b", FlowState::Start);
    let fx = s.up("a", FlowState::Start);
    assert_eq!(actions(&fx), ["rotation a", "resync a", "resync b"], "two readings of start: a joins as it is");
    synced(&mut s, "b", Sync::InStep);
    assert_eq!(actions(&s.up("b", FlowState::Start)), ["rotation a,b"]);
}

#[test]
fn a_failed_instance_leaves_at_once_and_rejoins_after_its_check() {
    let mut s = both_serving();
    let fx = s.probe("b", Err(CallError::Refused));
    assert_eq!(actions(&fx), ["release b failed", "rotation a"], "in-flight requests to b are released");
    assert_eq!(s.core.role(&id("b")), Role::Down);
    // Back (restarted, flows stopped): checked against the rotation's flows first.
    assert!(actions(&s.up("b", FlowState::Stop)).is_empty(), "rise: 2 good probes");
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["resync b"]);
    assert_eq!(s.core.role(&id("b")), Role::Standby, "not routed to before it is checked");
    assert_eq!(actions(&synced(&mut s, "b", Sync::InStep)), ["start b"]);
    assert_eq!(actions(&s.started("b")), ["rotation a,b"]);
}

#[test]
fn an_instance_out_of_step_leaves_until_it_is_resynced() {
    let mut s = both_serving();
    let fx = s.send(Event::Steps(vec![(id("b"), Sync::OutOfStep)]));
    assert_eq!(actions(&fx), ["release b", "rotation a", "resync b"], "running old flows: not routed to");
    let fx = s.send(Event::Steps(vec![(id("b"), Sync::InStep)]));
    assert_eq!(actions(&fx), ["rotation a,b"], "still running: rejoins without a start");
}

#[test]
fn the_last_instance_leaving_holds_requests_and_the_next_one_serves() {
    let mut s = both_serving();
    s.probe("a", Err(CallError::Refused));
    let fx = s.probe("b", Err(CallError::Timeout(400 * MS)));
    let fx = [fx, s.probe("b", Err(CallError::Timeout(400 * MS)))].concat();
    assert_eq!(actions(&fx), ["release b failed", "rotation "]);
    assert_eq!(s.core.phase(), Phase::NoActive);
    assert!(notices(&fx).contains(&Notice::NoCandidate));
}

#[test]
fn a_start_that_fails_cools_down_before_the_next_try() {
    let mut s = balanced(&[("a", 200), ("b", 100)]);
    s.up("a", FlowState::Stop);
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["start a"]);
    let fx = s.send(Event::Started { id: id("a"), result: Err(CallError::Timeout(400 * MS)) });
    assert_eq!(actions(&fx), ["start b"], "a cools down: b is the first instead");
    assert_eq!(actions(&s.started("b")), ["rotation b", "resync a", "resync b"]);
    synced(&mut s, "a", Sync::InStep);
    assert!(actions(&s.advance(1000 * MS)).is_empty(), "a still cools down");
    assert_eq!(actions(&s.advance(4000 * MS)), ["start a"]);
}

#[test]
fn only_one_unchecked_instance_is_started_first() {
    let mut s = balanced(&[("a", 200), ("b", 100)]);
    s.up("a", FlowState::Stop);
    assert_eq!(actions(&s.up("b", FlowState::Stop)), ["start a"]);
    // While a's start is on its way, b (not checked yet) is not started as a second first one.
    assert!(actions(&s.up("b", FlowState::Stop)).is_empty());
    assert!(actions(&s.advance(100 * MS)).is_empty());
    assert_eq!(actions(&s.started("a")), ["rotation a", "resync a", "resync b"]);
}

#[test]
fn there_is_no_active_role_to_switch_over() {
    let mut s = both_serving();
    let fx = s.send(Event::Switchover { to: Some(id("a")), ticket: 1 });
    assert_eq!(fx, [Effect::Reply { ticket: 1, result: Err(CommandError::Balanced) }]);
    let fx = s.send(Event::RollingRestart { ticket: 2 });
    assert!(matches!(&fx[..], [Effect::Reply { ticket: 2, result: Err(CommandError::RollingRefused(_)) }]));
}

fn notices(fx: &[Effect]) -> Vec<Notice> {
    super::tests::notices(fx)
}
