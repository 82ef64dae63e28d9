//! HA readiness of flows: which nodes do not survive the HA shape they run in, and what to do
//! about it. Pure: a flows document in, findings out; `flowgate check --flows`, every deploy
//! through flowgate and the active's flows at start use it (results in `/status`, the status
//! page and `flowgate_flow_hazards`). Findings are advice: nothing is ever refused for them.
//!
//! Two shapes: **hot-spare** (one instance runs flows; a failover starts them on another) and
//! **load-balanced** (every instance runs flows; requests are shared). What breaks:
//!
//! | kind | hot-spare | load-balanced |
//! |---|---|---|
//! | `memory_context` | lost at every failover | each instance sees only its own |
//! | `mqtt_qos0` | messages during a failover are lost | – |
//! | `mqtt_session` | a clean or generated-id session: the broker drops what arrives in between | – |
//! | `mqtt_unshared` | – | every instance processes every message |
//! | `mqtt_client_id` | – | the same client id twice: the broker disconnects one for the other |
//! | `inject_once` | fires again at every failover | fires once on every instance |
//! | `inject_repeat` | – | runs on every instance |
//! | `stateful` | – | smooth, batch, join, trigger, filter, rate-limiting delay see only part of the messages |
//! | `local_files` | the spare has its own disk | each instance has its own disk |
//!
//! Disabled nodes and nodes on disabled tabs are skipped.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

/// The HA shape the findings are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    HotSpare,
    LoadBalanced,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::HotSpare, Mode::LoadBalanced];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::HotSpare => "hot-spare",
            Mode::LoadBalanced => "load-balanced",
        }
    }
}

/// Every kind of hazard, as named in config (`readiness.ignore`) and metrics.
pub const KINDS: [&str; 9] = [
    "memory_context",
    "mqtt_qos0",
    "mqtt_session",
    "mqtt_unshared",
    "mqtt_client_id",
    "inject_once",
    "inject_repeat",
    "stateful",
    "local_files",
];

/// One node that does not survive a mode, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    /// The node's id.
    pub node: String,
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: String,
    /// The label of its tab or subflow ("(config)" for config nodes).
    pub tab: String,
    pub problem: String,
    pub fix: String,
}

/// The nodes of a flows document: Node-RED's export (an array) or `GET /flows` v2
/// (`{"rev", "flows": [...]}`).
pub fn nodes(doc: &Value) -> Option<&Vec<Value>> {
    match doc {
        Value::Array(a) => Some(a),
        Value::Object(o) => o.get("flows").and_then(Value::as_array),
        _ => None,
    }
}

fn s<'a>(n: &'a Value, key: &str) -> &'a str {
    n.get(key).and_then(Value::as_str).unwrap_or("")
}

fn truthy(n: &Value, key: &str) -> bool {
    match n.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(v)) => v == "true",
        _ => false,
    }
}

/// Uses flow or global context, or `context` of a function node, from code.
fn code_uses_context(code: &str) -> bool {
    ["context.get", "context.set", "flow.get", "flow.set", "global.get", "global.set", "context.flow", "context.global"]
        .iter()
        .any(|p| code.contains(p))
}

fn uses_context(n: &Value) -> bool {
    match s(n, "type") {
        "function" => ["func", "initialize", "finalize"].iter().any(|k| code_uses_context(s(n, k))),
        "change" => n
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| ["pt", "tot", "fromt"].iter().any(|k| matches!(s(r, k), "flow" | "global"))),
        _ => false,
    }
}

/// Findings for `mode`, leaving out the kinds in `ignore`.
pub fn check(doc: &Value, mode: Mode, ignore: &[String]) -> Vec<Finding> {
    let Some(all) = nodes(doc) else { return Vec::new() };
    let mut tabs: HashMap<&str, (String, bool)> = HashMap::new();
    for n in all {
        match s(n, "type") {
            "tab" => drop(tabs.insert(s(n, "id"), (s(n, "label").to_string(), truthy(n, "disabled")))),
            "subflow" => drop(tabs.insert(s(n, "id"), (format!("subflow {}", s(n, "name")), false))),
            _ => {}
        }
    }
    let live = |n: &&Value| !truthy(n, "d") && !tabs.get(s(n, "z")).is_some_and(|(_, disabled)| *disabled);
    let subscribers: Vec<&Value> = all.iter().filter(live).filter(|n| s(n, "type") == "mqtt in").collect();
    let used_brokers: HashSet<&str> = subscribers.iter().map(|n| s(n, "broker")).collect();
    let mut out = Vec::new();
    let mut add = |n: &Value, kind: &'static str, problem: String, fix: &str| {
        if ignore.iter().any(|k| k == kind) {
            return;
        }
        let tab = match n.get("z").and_then(Value::as_str).filter(|z| !z.is_empty()) {
            Some(z) => tabs.get(z).map_or_else(|| z.to_string(), |(label, _)| label.clone()),
            None => "(config)".to_string(),
        };
        out.push(Finding {
            kind,
            node: s(n, "id").to_string(),
            name: s(n, "name").to_string(),
            node_type: s(n, "type").to_string(),
            tab,
            problem,
            fix: fix.to_string(),
        });
    };
    let hot = mode == Mode::HotSpare;
    for n in all.iter().filter(live) {
        let ty = s(n, "type");
        if uses_context(n) {
            let problem = if hot {
                "keeps context in memory (unless a persistent store is configured): it is lost at every failover"
            } else {
                "uses context: with the default memory store each instance has its own, and sees only what it set"
            };
            add(
                n,
                "memory_context",
                problem.into(),
                "keep the state in a store every instance shares (a database, Redis), or a persistent context store on shared storage",
            );
        }
        match ty {
            "inject" => {
                let repeats = !s(n, "repeat").is_empty() || !s(n, "crontab").is_empty();
                if truthy(n, "once") {
                    let problem = if hot {
                        "fires when flows start: again at every failover and switchover"
                    } else {
                        "fires once on every instance"
                    };
                    add(
                        n,
                        "inject_once",
                        problem.into(),
                        "make what it triggers idempotent, or remember that it ran in a shared store",
                    );
                }
                if repeats && !hot {
                    add(
                        n,
                        "inject_repeat",
                        "repeats on every instance: the work is done once per instance".into(),
                        "trigger it once from outside (a scheduler calling an http in route), or make it idempotent",
                    );
                }
            }
            "mqtt in" => {
                let topic = s(n, "topic");
                if hot && s(n, "qos") == "0" {
                    add(
                        n,
                        "mqtt_qos0",
                        format!("subscribes to \"{topic}\" with QoS 0: messages published during a failover are lost"),
                        "subscribe with QoS 1 or 2, with a fixed client id and clean session off on its broker node",
                    );
                }
                if !hot && !topic.starts_with("$share/") && !truthy(n, "inputs") && !topic.is_empty() {
                    add(
                        n,
                        "mqtt_unshared",
                        format!(
                            "subscribes to \"{topic}\" on every instance: each message is processed once per instance"
                        ),
                        "subscribe to $share/<group>/<topic> (MQTT 5, or a broker with shared subscriptions)",
                    );
                }
            }
            "mqtt-broker" if used_brokers.contains(s(n, "id")) => {
                let generated = s(n, "clientid").trim().is_empty();
                let clean = n.get("cleansession").is_none_or(|v| v.as_bool().unwrap_or(true));
                if hot && (generated || clean) {
                    let why = match (generated, clean) {
                        (true, true) => "a generated client id and a clean session",
                        (true, false) => "a generated client id",
                        _ => "a clean session",
                    };
                    add(
                        n,
                        "mqtt_session",
                        format!(
                            "connects with {why}: the broker keeps nothing for the new active, so messages between the failure and the reconnect are lost"
                        ),
                        "set a fixed Client ID and untick \"Use clean session\" (with QoS 1 or 2 subscriptions): the new active resumes the session",
                    );
                }
                if !hot && !generated && !s(n, "clientid").contains("${") {
                    add(
                        n,
                        "mqtt_client_id",
                        format!(
                            "every instance connects as \"{}\": the broker disconnects one whenever the other connects",
                            s(n, "clientid")
                        ),
                        "leave the Client ID empty, or make it differ per instance (e.g. ${HOSTNAME} with an env var)",
                    );
                }
            }
            "smooth" | "batch" | "join" | "trigger" | "rbe" if !hot => {
                add(
                    n,
                    "stateful",
                    "keeps state between messages: each instance sees only the messages routed to it".into(),
                    "run this part in hot-spare mode, or keep its state in a shared store",
                );
            }
            "delay" if matches!(s(n, "pauseType"), "rate" | "queue" | "timed") && !hot => {
                add(
                    n,
                    "stateful",
                    "limits the rate per instance: together they pass the limit times the number of instances".into(),
                    "divide the rate by the number of instances, or rate-limit upstream",
                );
            }
            "file" | "file in" | "watch" | "tail" | "sqlitedb" => {
                let what = if ty == "sqlitedb" { s(n, "db") } else { s(n, "filename") };
                let problem = format!(
                    "uses the local file {}: {}",
                    if what.is_empty() { "(set by the message)" } else { what },
                    if hot { "the spare has its own disk" } else { "each instance has its own disk" }
                );
                add(n, "local_files", problem, "keep the files on storage every instance mounts, or in a database");
            }
            _ => {}
        }
    }
    out
}

/// The findings for `modes` as text, one line per node, and how many there were.
pub fn report(doc: &Value, modes: &[Mode], ignore: &[String]) -> (String, usize) {
    let mut out = String::new();
    let mut total = 0;
    for &mode in modes {
        let found = check(doc, mode, ignore);
        total += found.len();
        out += &format!(
            "{}: {}\n",
            mode.as_str(),
            if found.is_empty() { "no findings".to_string() } else { format!("{} finding(s)", found.len()) }
        );
        for f in &found {
            let name = if f.name.is_empty() { String::new() } else { format!(" \"{}\"", f.name) };
            out += &format!(
                "  {:<15} {}{name} ({}, {}): {}\n  {:<15} fix: {}\n",
                f.kind, f.node, f.node_type, f.tab, f.problem, "", f.fix
            );
        }
    }
    (out, total)
}

/// Count of findings per kind (every kind present, zero when none).
pub fn counts(findings: &[Finding]) -> Vec<(&'static str, usize)> {
    KINDS.iter().map(|&k| (k, findings.iter().filter(|f| f.kind == k).count())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One node of each hazard, plus harmless and disabled ones.
    fn hazards() -> Value {
        serde_json::from_str(include_str!("../tests/fixtures/ha-hazards.json")).unwrap()
    }

    fn ids(f: &[Finding]) -> Vec<(&str, &str)> {
        f.iter().map(|f| (f.kind, f.node.as_str())).collect()
    }

    #[test]
    fn each_hazard_is_found_in_the_modes_it_breaks_and_nowhere_else() {
        let doc = hazards();
        assert_eq!(
            ids(&check(&doc, Mode::HotSpare, &[])),
            [
                ("memory_context", "ctx"),
                ("memory_context", "chg"),
                ("inject_once", "once"),
                ("mqtt_qos0", "q0"),
                ("mqtt_session", "b1"),
                ("local_files", "file"),
            ]
        );
        assert_eq!(
            ids(&check(&doc, Mode::LoadBalanced, &[])),
            [
                ("memory_context", "ctx"),
                ("memory_context", "chg"),
                ("inject_once", "once"),
                ("inject_repeat", "tick"),
                ("inject_repeat", "cron"),
                ("mqtt_unshared", "q0"),
                ("mqtt_client_id", "b2"),
                ("stateful", "join"),
                ("stateful", "rate"),
                ("local_files", "file"),
            ]
        );
    }

    #[test]
    fn findings_name_the_node_its_tab_and_the_fix() {
        let f = check(&hazards(), Mode::HotSpare, &[]);
        let ctx = &f[0];
        assert_eq!((ctx.name.as_str(), ctx.node_type.as_str(), ctx.tab.as_str()), ("count", "function", "Plant"));
        assert!(ctx.problem.contains("lost at every failover") && !ctx.fix.is_empty());
        let broker = f.iter().find(|x| x.kind == "mqtt_session").unwrap();
        assert_eq!(broker.tab, "(config)");
        assert!(broker.problem.contains("a generated client id and a clean session"), "{}", broker.problem);
    }

    #[test]
    fn kinds_can_be_silenced_and_v2_documents_are_read() {
        let doc = json!({"rev": "abc", "flows": hazards()});
        let ignore = vec!["memory_context".to_string(), "local_files".to_string()];
        let f = check(&doc, Mode::HotSpare, &ignore);
        assert_eq!(ids(&f), [("inject_once", "once"), ("mqtt_qos0", "q0"), ("mqtt_session", "b1")]);
        let c = counts(&f);
        assert_eq!(c.len(), KINDS.len());
        assert!(c.contains(&("mqtt_qos0", 1)) && c.contains(&("stateful", 0)));
    }

    #[test]
    fn the_report_lists_every_finding_with_its_fix() {
        let (text, n) = report(&hazards(), &[Mode::HotSpare], &[]);
        assert_eq!(n, 6);
        assert!(
            text.starts_with(
                "hot-spare: 6 finding(s)\n  memory_context  ctx \"count\" (function, Plant): keeps context"
            ),
            "{text}"
        );
        assert!(text.contains("fix: subscribe with QoS 1 or 2"), "{text}");
        let (text, n) = report(&serde_json::json!([]), &Mode::ALL, &[]);
        assert_eq!((text.as_str(), n), ("hot-spare: no findings\nload-balanced: no findings\n", 0));
    }

    #[test]
    fn a_flow_made_for_ha_has_no_findings() {
        let clean = json!([
            {"id": "t1", "type": "tab", "label": "Plant"},
            {"id": "in", "type": "http in", "z": "t1", "url": "/hello", "method": "get"},
            {"id": "fn", "type": "function", "z": "t1", "func": "msg.payload = 'hello';\nreturn msg;"},
            {"id": "res", "type": "http response", "z": "t1"},
            {"id": "m", "type": "mqtt in", "z": "t1", "topic": "$share/fg/plant/#", "qos": "1", "broker": "b"},
            {"id": "b", "type": "mqtt-broker", "clientid": "", "cleansession": false}
        ]);
        assert_eq!(ids(&check(&clean, Mode::LoadBalanced, &[])), []);
        // The same broker in hot-spare mode: a generated client id cannot resume a session.
        assert_eq!(ids(&check(&clean, Mode::HotSpare, &[])), [("mqtt_session", "b")]);
    }
}
