//! Recovery and rolling restarts as event scripts: when a failed instance is restarted,
//! when it counts as back, the crash-loop limit, operator restarts, and the rolling restart's
//! order (standbys, one switchover, the old active).

use std::time::Duration;

use super::tests::{MS, Script, actions, id, moves, notices, settings};
use super::*;

const S: Duration = Duration::from_secs(1);

/// a (200) active, b standby, both in step, both with a restart command.
fn serving() -> Script {
    serving_first(&[("a", 200), ("b", 100)])
}

/// The first instance active, the others stopped standbys, all in step and restartable.
fn serving_first(list: &[(&str, i64)]) -> Script {
    let mut specs = super::tests::specs(list);
    for s in &mut specs {
        s.restartable = true;
    }
    let mut s = Script::of(specs, settings());
    for (n, _) in list {
        s.up(n, FlowState::Stop);
    }
    s.locked();
    for (n, _) in &list[1..] {
        s.stopped(n, Ok(()));
    }
    s.started(list[0].0);
    s.all_in_step();
    for (n, _) in list {
        s.send(Event::Synced { id: id(n), outcome: SyncOutcome::InStep });
    }
    assert_eq!(s.core.active(), Some(&id(list[0].0)));
    s.advance(3 * S); // past the promotion's grace
    s
}

fn restarted(s: &mut Script, n: &str, result: Result<(), String>) -> Vec<Effect> {
    s.send(Event::Restarted { id: id(n), result })
}

/// The instance boots stopped and is checked in step: what "back" takes.
fn comes_back(s: &mut Script, n: &str) -> Vec<Effect> {
    let mut fx = s.up(n, FlowState::Stop);
    fx.extend(s.up(n, FlowState::Stop));
    let steps = s.core.members().iter().map(|m| (m.spec.id.clone(), Sync::InStep)).collect();
    fx.extend(s.send(Event::Steps(steps)));
    fx.extend(s.send(Event::Synced { id: id(n), outcome: SyncOutcome::InStep }));
    fx
}

fn restart_results(fx: &[Effect]) -> Vec<(InstanceId, RestartReason, bool)> {
    notices(fx)
        .into_iter()
        .filter_map(|n| match n {
            Notice::Restart { id, reason, result } => Some((id, reason, result.is_ok())),
            _ => None,
        })
        .collect()
}

fn replies(fx: &[Effect]) -> Vec<Result<String, CommandError>> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Reply { result, .. } => Some(result.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_hung_active_is_failed_over_then_restarted_once_fenced_and_rejoins_as_a_standby() {
    let mut s = serving();
    let hang = || Err(CallError::Timeout(400 * MS));
    s.probe("a", hang());
    let fx = s.probe("a", hang());
    assert_eq!(actions(&fx), ["release a failed", "route -", "lock"], "fenced first");
    s.locked();
    s.started("b");
    assert_eq!(s.core.active(), Some(&id("b")));
    assert!(!actions(&s.advance(4900 * MS)).contains(&"restart a".to_string()), "not before hung_for");
    assert_eq!(s.core.next_wake(s.now), Some(s.now + 100 * MS), "the core wakes for it");
    assert_eq!(actions(&s.advance(100 * MS)), ["restart a"]);
    assert!(!s.core.member(&id("a")).unwrap().eligible(), "never promoted while its restart runs");
    assert!(actions(&s.advance(10 * S)).is_empty(), "one restart at a time");
    restarted(&mut s, "a", Ok(()));
    assert_eq!(s.core.member(&id("a")).unwrap().recovery.state(), Some("waiting"));
    let fx = comes_back(&mut s, "a");
    assert_eq!(restart_results(&fx), [(id("a"), RestartReason::Hang, true)]);
    assert_eq!(s.core.role(&id("a")), Role::Standby);
    assert_eq!(s.core.active(), Some(&id("b")), "no failback: it rejoins as a standby");
    assert_eq!(s.core.member(&id("a")).unwrap().recovery.state(), None);
}

#[test]
fn nothing_is_restarted_while_a_promotion_runs() {
    let mut s = serving();
    s.probe("a", Err(CallError::Timeout(400 * MS)));
    s.probe("a", Err(CallError::Timeout(400 * MS)));
    // The promotion waits for the change lock: a stays as it is meanwhile.
    assert!(!actions(&s.advance(6 * S)).contains(&"restart a".to_string()));
    assert_eq!(s.core.next_wake(s.now), None);
    let fx = s.locked();
    assert_eq!(actions(&fx), ["start b"]);
    assert_eq!(actions(&s.started("b")), ["unlock", "route b", "restart a"], "due since, so at once after");
}

#[test]
fn a_crashed_standby_is_given_down_for_to_come_back_by_itself_then_restarted() {
    let mut s = serving();
    s.probe("b", Err(CallError::Refused));
    assert!(actions(&s.advance(29 * S)).is_empty());
    let fx = s.advance(S);
    assert_eq!(actions(&fx), ["restart b"]);
    assert!(notices(&fx).contains(&Notice::Restarting { id: id("b"), reason: RestartReason::Crash }));
    restarted(&mut s, "b", Ok(()));
    let fx = comes_back(&mut s, "b");
    assert_eq!(restart_results(&fx), [(id("b"), RestartReason::Crash, true)]);
    assert_eq!(s.core.member(&id("b")).unwrap().recovery.total, 1);
}

#[test]
fn one_that_comes_back_by_itself_is_not_restarted() {
    let mut s = serving();
    s.probe("b", Err(CallError::Refused));
    s.advance(10 * S);
    comes_back(&mut s, "b");
    assert!(actions(&s.advance(60 * S)).is_empty());
}

#[test]
fn a_crash_loop_is_restarted_with_backoff_up_to_the_limit_then_left_down_and_shown() {
    let mut s = serving();
    s.probe("b", Err(CallError::Refused));
    let mut at = Vec::new();
    let start = s.now;
    for _ in 0..400 {
        let fx = s.advance(S);
        if actions(&fx).contains(&"restart b".to_string()) {
            at.push(s.now - start);
            // The command "works", but the instance dies at once: never back.
            restarted(&mut s, "b", Ok(()));
            s.probe("b", Err(CallError::Refused));
        }
        if notices(&fx).iter().any(|n| matches!(n, Notice::RecoveryExhausted { .. })) {
            break;
        }
    }
    // Down 30 s; then not back within 60 s, +30 s down_for (backoff 10 s, 20 s below that).
    assert_eq!(at, [30 * S, 120 * S, 210 * S], "three restarts");
    let b = s.core.member(&id("b")).unwrap();
    assert!(b.recovery.gave_up);
    assert_eq!(b.recovery.state(), Some("gave_up"));
    assert_eq!(b.recovery.recent(Duration::from_secs(600), s.now), 3);
    assert!(actions(&s.advance(600 * S)).is_empty(), "left down, even after the window");
    // An operator's restart resets the count.
    let fx = s.send(Event::Restart { id: id("b"), ticket: 7 });
    assert_eq!(actions(&fx), ["restart b"]);
    assert!(!s.core.member(&id("b")).unwrap().recovery.gave_up);
}

#[test]
fn backoff_doubles_between_restarts_within_the_window() {
    let mut set = settings();
    set.recovery.down_for = Duration::ZERO;
    set.recovery.start_timeout = S;
    let mut specs = super::tests::specs(&[("a", 200), ("b", 100)]);
    specs[1].restartable = true;
    let mut s = Script::of(specs, set);
    s.up("a", FlowState::Stop);
    s.probe("b", Err(CallError::Refused));
    s.advance(2 * S);
    s.locked();
    let start = s.now;
    let mut at = Vec::new();
    let mut fx = s.started("a");
    for _ in 0..100 {
        if actions(&fx).contains(&"restart b".to_string()) {
            at.push((s.now - start).as_secs());
            restarted(&mut s, "b", Ok(()));
        }
        fx = s.advance(S);
    }
    // Due at once (down_for 0); each not back within 1 s; then pauses of 10 s and 20 s from
    // the previous restart.
    assert_eq!(at, [0, 10, 30]);
}

#[test]
fn a_failed_command_is_a_failed_restart_and_the_operator_hears_why() {
    let mut s = serving();
    let fx = s.send(Event::Restart { id: id("b"), ticket: 1 });
    assert_eq!(actions(&fx), ["restart b"]);
    let fx = restarted(&mut s, "b", Err("systemctl exited with 1".into()));
    assert_eq!(restart_results(&fx), [(id("b"), RestartReason::Operator, false)]);
    let r = replies(&fx);
    assert!(matches!(&r[..], [Err(CommandError::Restart { why, .. })] if why.contains("systemctl exited")), "{r:?}");
}

#[test]
fn an_operator_restart_answers_once_the_instance_is_back_and_is_refused_where_it_must_be() {
    let mut s = serving();
    let refused = |s: &mut Script, n: &str| replies(&s.send(Event::Restart { id: id(n), ticket: 1 }));
    assert_eq!(refused(&mut s, "a"), [Err(CommandError::IsActive(id("a")))]);
    assert!(matches!(&refused(&mut s, "x")[..], [Err(CommandError::Unknown { .. })]));
    s.send(Event::Restart { id: id("b"), ticket: 2 });
    assert_eq!(refused(&mut s, "b"), [Err(CommandError::Restarting(id("b")))]);
    let fx = restarted(&mut s, "b", Ok(()));
    assert!(replies(&fx).is_empty(), "not yet: it must be back");
    let fx = s.up("b", FlowState::Stop);
    assert!(replies(&fx).is_empty(), "one probe after a restart is not enough (rise)");
    let fx = comes_back(&mut s, "b");
    assert!(matches!(&replies(&fx)[..], [Ok(m)] if m.contains("b restarted")));

    let mut plain = Script::serving_a();
    let r = replies(&plain.send(Event::Restart { id: id("b"), ticket: 3 }));
    assert_eq!(r, [Err(CommandError::NoRestartCommand(id("b")))]);
}

#[test]
fn a_restarted_instance_that_boots_running_is_stopped_before_it_counts_as_back() {
    let mut s = serving();
    s.send(Event::Restart { id: id("b"), ticket: 1 });
    restarted(&mut s, "b", Ok(()));
    let fx = s.up("b", FlowState::Start);
    assert_eq!(moves(&fx), ["stop stray b"]);
    s.send(Event::Stopped { id: id("b"), purpose: StopFor::Stray, result: Ok(()) });
    assert_eq!(s.core.member(&id("b")).unwrap().recovery.state(), Some("waiting"));
    let fx = comes_back(&mut s, "b");
    assert!(matches!(&replies(&fx)[..], [Ok(_)]));
}

#[test]
fn a_restart_flowgate_ordered_is_not_counted_as_flapping() {
    let mut s = serving();
    for t in 0..4 {
        s.send(Event::Restart { id: id("b"), ticket: t });
        s.probe("b", Err(CallError::Refused));
        restarted(&mut s, "b", Ok(()));
        comes_back(&mut s, "b");
    }
    assert!(!s.core.member(&id("b")).unwrap().flapping(s.now));
}

#[test]
fn rolling_restart_restarts_standbys_then_switches_over_once_then_restarts_the_old_active() {
    let mut s = serving();
    let fx = s.send(Event::RollingRestart { ticket: 9 });
    assert_eq!(actions(&fx), ["restart b"], "the active is not touched first");
    restarted(&mut s, "b", Ok(()));
    assert_eq!(s.core.rolling_view().unwrap().detail, "restarting standby b");
    let fx = comes_back(&mut s, "b");
    assert_eq!(actions(&fx), ["resync b", "release a", "route -", "lock"], "back: the switchover");
    assert_eq!(actions(&s.locked()), ["stop a"], "break before make");
    assert_eq!(actions(&s.stopped("a", Ok(()))), ["start b"]);
    let fx = s.started("b");
    assert_eq!(actions(&fx), ["unlock", "route b", "restart a"]);
    restarted(&mut s, "a", Ok(()));
    let fx = comes_back(&mut s, "a");
    let r = replies(&fx);
    assert!(matches!(&r[..], [Ok(m)] if m == "restarted b, a; b is active"), "{r:?}");
    assert_eq!(s.core.active(), Some(&id("b")));
    let v = s.core.rolling_view().unwrap();
    assert_eq!((v.state, v.restarted.clone()), ("done", vec!["b".to_string(), "a".to_string()]));
}

#[test]
fn a_rolling_restart_stops_at_a_failed_standby_and_leaves_the_active_serving() {
    let mut s = serving();
    s.send(Event::RollingRestart { ticket: 9 });
    restarted(&mut s, "b", Ok(()));
    let fx = s.advance(60 * S);
    let r = replies(&fx);
    assert!(
        matches!(&r[..], [Err(CommandError::RollingFailed(m))] if m.contains("restarting b") && m.contains("a stays active")),
        "{r:?}"
    );
    assert!(moves(&fx).is_empty());
    assert_eq!(s.core.active(), Some(&id("a")));
    assert_eq!(s.core.rolling_view().unwrap().state, "failed");
}

#[test]
fn a_rolling_restart_starts_only_on_a_ready_cluster() {
    let mut s = serving();
    s.probe("b", Err(CallError::Refused));
    let r = replies(&s.send(Event::RollingRestart { ticket: 1 }));
    assert!(matches!(&r[..], [Err(CommandError::RollingRefused(m))] if m.contains("b is down")), "{r:?}");
    let mut plain = Script::serving_a();
    let r = replies(&plain.send(Event::RollingRestart { ticket: 1 }));
    assert!(matches!(&r[..], [Err(CommandError::RollingRefused(m))] if m.contains("no restart command")), "{r:?}");
}

#[test]
fn during_a_rolling_restart_switchovers_and_restarts_wait() {
    let mut s = serving();
    s.send(Event::RollingRestart { ticket: 1 });
    assert_eq!(replies(&s.send(Event::Switchover { to: None, ticket: 2 })), [Err(CommandError::Rolling)]);
    assert!(s.core.busy(), "a reload waits too");
}

#[test]
fn a_failover_while_a_standby_is_restarted_stops_the_rolling_restart() {
    let mut s = serving_first(&[("a", 200), ("b", 100), ("c", 50)]);
    s.send(Event::RollingRestart { ticket: 1 });
    let fx = s.probe("a", Err(CallError::Refused));
    let r = replies(&fx);
    assert!(matches!(&r[..], [Err(CommandError::RollingFailed(m))] if m.contains("active a was lost")), "{r:?}");
}
