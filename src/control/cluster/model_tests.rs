//! The core's central invariant, checked on random scripts rather than chosen ones.

use std::time::Duration;

use super::tests::{MS, Script, actions, id, notices, settings};
use super::*;

/// Random scripts against a model of real instances (they crash, hang, reboot with their
/// flows running, answer calls in any order). At every step at most one instance is one the
/// core told to run flows and has not since seen stopped, seen down, or fenced (it did not
/// answer a stop), and a start is never sent while another such instance exists. At the end,
/// with every instance healthy, there is an active again and no call is left unanswered.
#[test]
fn at_most_one_instance_is_ever_told_to_run_flows() {
    #[derive(Clone, Copy, Default)]
    struct Inst {
        dead: bool,
        hung: bool,
        running: bool,
    }
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
    let names = ["a", "b", "c"];
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut st = settings();
        st.failback = seed % 2 == 0;
        st.failback_delay = Duration::from_secs(2);
        let mut s = Script::with(&[("a", 300), ("b", 200), ("c", 100)], st);
        let mut insts = [Inst::default(); 3];
        let mut pending: Vec<Effect> = Vec::new();
        let mut told: Vec<usize> = Vec::new();
        let trace = std::cell::RefCell::new(Vec::<String>::new());
        let idx = |n: &InstanceId| names.iter().position(|x| *x == n.as_str()).unwrap();
        let handle = |fx: Vec<Effect>, pending: &mut Vec<Effect>, told: &mut Vec<usize>| {
            for e in fx {
                match &e {
                    Effect::StartFlows { id, .. } => {
                        let t = idx(id);
                        assert!(
                            told.iter().all(|&o| o == t),
                            "seed {seed}: start {id} while {told:?} run; trace:\n{}",
                            trace.borrow().join("\n")
                        );
                        told.push(t);
                        told.dedup();
                        pending.push(e);
                    }
                    // Seen down, or fenced because it did not answer its stop.
                    Effect::Notice(Notice::Down { id, .. } | Notice::StopUnanswered { id }) => {
                        told.retain(|&o| o != idx(id))
                    }
                    Effect::StopFlows { .. } | Effect::TakeChangeLock | Effect::Resync { .. } => pending.push(e),
                    _ => {}
                }
                assert!(told.len() <= 1, "seed {seed}: {told:?} told to run");
            }
        };
        for round in 0..600 {
            let last = round >= 240; // heal everything and let it settle
            if round > 300 && pending.is_empty() && s.core.active().is_some() {
                break;
            }
            if last {
                insts.iter_mut().for_each(|i| {
                    i.dead = false;
                    i.hung = false
                });
            }
            let r = rng.next(10);
            let fx = if (r < 4 || last) && !pending.is_empty() {
                let e = pending.remove(rng.next(pending.len() as u64) as usize);
                let answer = |i: &Inst| {
                    if i.dead {
                        Err(CallError::Refused)
                    } else if i.hung {
                        Err(CallError::Timeout(400 * MS))
                    } else {
                        Ok(())
                    }
                };
                match e {
                    Effect::TakeChangeLock => s.send(Event::ChangeLockTaken { got: rng.next(4) > 0 }),
                    Effect::StopFlows { id, purpose, .. } => {
                        let i = &mut insts[idx(&id)];
                        let result = answer(i);
                        if result.is_ok() {
                            i.running = false;
                            told.retain(|&o| o != idx(&id));
                        }
                        s.send(Event::Stopped { id, purpose, result })
                    }
                    Effect::StartFlows { id, .. } => {
                        let i = &mut insts[idx(&id)];
                        let result = answer(i);
                        if result.is_ok() {
                            i.running = true;
                        }
                        s.send(Event::Started { id, result })
                    }
                    Effect::Resync { id, .. } => {
                        // As the driver does: the table says in step, then the result arrives.
                        s.send(Event::Steps(vec![(id.clone(), Sync::InStep)]));
                        s.send(Event::Synced { id, outcome: SyncOutcome::InStep })
                    }
                    _ => unreachable!(),
                }
            } else if r < 7 || last {
                let n = rng.next(3) as usize;
                let i = insts[n];
                let state = if i.dead {
                    Err(CallError::Refused)
                } else if i.hung {
                    Err(CallError::Timeout(400 * MS))
                } else {
                    Ok(if i.running { FlowState::Start } else { FlowState::Stop })
                };
                s.now += 100 * MS;
                s.probe(names[n], state)
            } else if r < 8 {
                let n = rng.next(3) as usize;
                let i = &mut insts[n];
                match rng.next(4) {
                    0 => *i = Inst { dead: true, hung: false, running: false },
                    1 if i.dead => *i = Inst { dead: false, hung: false, running: rng.next(2) == 0 },
                    2 => i.hung = !i.hung,
                    _ => {}
                }
                Vec::new()
            } else if r < 9 {
                let to = match rng.next(4) {
                    3 => None,
                    n => Some(id(names[n as usize])),
                };
                s.send(Event::Switchover { to, ticket: round })
            } else {
                s.advance(Duration::from_millis(rng.next(3000)))
            };
            trace.borrow_mut().push(format!(
                "{round}: {:?} -> {:?} {:?}",
                insts.map(|i| (i.dead, i.hung, i.running)),
                actions(&fx),
                notices(&fx)
            ));
            handle(fx, &mut pending, &mut told);
        }
        assert!(pending.is_empty(), "seed {seed}: effects left unanswered: {pending:?}");
        assert!(s.core.active().is_some(), "seed {seed}: no active after healing: {:?}", s.core.phase());
    }
}
