//! What every instance should have (the *target*: flows, their `rev`, credentials) and how far
//! each instance is from it. Shared by the deploy path (writer on each deploy) and the
//! supervisor (resyncs, election). Deploys are rare: one mutex, never held across an await.
//!
//! Credentials: Node-RED never returns them through its API, and later deploys do not resend
//! them, so an instance that missed a credential change can only be repaired with values
//! flowgate remembered. flowgate merges the credentials of every deploy that passes through
//! it (Node-RED's own rules: `__PWRD__` keeps a value, a blank deletes it) and keeps them only
//! encrypted at rest (AES-256-GCM with `state.key`, file mode 0600). Without `state.key` they
//! are kept in memory only. Flows are stored without credentials.
//!
//! Persistence (`state.dir`): `target.json` (rev, flows, credential generation, per-instance
//! applied state) and `credentials.sealed`. Written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto;

/// How an instance stands relative to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Not checked since flowgate started or the instance came back.
    Unknown,
    InStep,
    /// Needs a resync; the reason says why.
    OutOfStep(String),
}

/// What an instance answered to a copy of a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// It took the deploy; its new revision when the answer says it (API v2).
    Took { rev: Option<String> },
    /// 409: its flows were not those the copy expected.
    Conflict,
    /// Any other refusal, with the status.
    Refused(String),
    /// No answer (connection, timeout, fenced by a promotion).
    Failed(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub rev: Option<String>,
    pub cred_gen: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    rev: Option<String>,
    flows: Option<Value>,
    cred_gen: u64,
    #[serde(default)]
    applied: HashMap<String, Applied>,
}

pub struct SyncTable {
    /// The rev every instance should have (the active's after the last deploy).
    pub rev: Option<String>,
    /// The flows of that rev, without credentials.
    pub flows: Option<Value>,
    /// Merged plaintext credentials by node id.
    pub credentials: Map<String, Value>,
    /// Bumped by every deploy that changed credentials.
    pub cred_gen: u64,
    /// Per instance (config order).
    pub steps: Vec<Step>,
    pub applied: Vec<Applied>,
    ids: Vec<String>,
    store: Option<Store>,
}

struct Store {
    dir: PathBuf,
    key: Option<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// The table's files as of one moment; see [`SyncTable::snapshot`].
pub struct Snapshot {
    dir: std::path::PathBuf,
    target: Vec<u8>,
    sealed: Option<Vec<u8>>,
}

impl Snapshot {
    pub fn write(self) -> Result<(), StoreError> {
        write_private(&self.dir.join("target.json"), &self.target)?;
        if let Some(sealed) = &self.sealed {
            write_private(&self.dir.join("credentials.sealed"), sealed)?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::files::write_private(path, data).map_err(|e| StoreError::Io { path: e.path, source: e.source })
}

impl SyncTable {
    /// A table for `ids`, loaded from `dir` when given.
    pub fn open(ids: Vec<String>, dir: Option<&Path>, key: Option<&str>) -> Result<Self, StoreError> {
        let n = ids.len();
        let mut t = SyncTable {
            rev: None,
            flows: None,
            credentials: Map::new(),
            cred_gen: 0,
            steps: vec![Step::Unknown; n],
            applied: vec![Applied::default(); n],
            ids,
            store: dir.map(|d| Store { dir: d.to_owned(), key: key.map(crypto::key_from_secret) }),
        };
        let Some(store) = &t.store else { return Ok(t) };
        std::fs::create_dir_all(&store.dir).map_err(|source| StoreError::Io { path: store.dir.clone(), source })?;
        let path = store.dir.join("target.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt { path: path.clone(), detail: e.to_string() })?;
                t.rev = p.rev;
                t.flows = p.flows;
                t.cred_gen = p.cred_gen;
                for (i, id) in t.ids.iter().enumerate() {
                    if let Some(a) = p.applied.get(id) {
                        t.applied[i] = a.clone();
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        let cpath = store.dir.join("credentials.sealed");
        if let (Some(key), Ok(sealed)) = (&store.key, std::fs::read(&cpath)) {
            let plain = crypto::open(key, &sealed).ok_or_else(|| StoreError::Corrupt {
                path: cpath.clone(),
                detail: "cannot decrypt: state.key differs from the one it was written with".into(),
            })?;
            t.credentials = serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Corrupt { path: cpath.clone(), detail: e.to_string() })?;
        }
        Ok(t)
    }

    /// Whether credentials survive a flowgate restart.
    pub fn credentials_persisted(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.key.is_some())
    }

    pub fn save(&self) -> Result<(), StoreError> {
        self.snapshot().map_or(Ok(()), |s| s.write())
    }

    /// What [`SyncTable::save`] writes, taken now, to be written (and synced to disk) after
    /// the table's lock is released: nothing that reads the table waits for the disk.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let store = self.store.as_ref()?;
        let p = Persisted {
            rev: self.rev.clone(),
            flows: self.flows.clone(),
            cred_gen: self.cred_gen,
            applied: self.ids.iter().cloned().zip(self.applied.iter().cloned()).collect(),
        };
        let sealed = store.key.as_ref().map(|key| {
            let plain = serde_json::to_vec(&self.credentials).expect("serialises");
            crypto::seal(key, &plain)
        });
        Some(Snapshot { dir: store.dir.clone(), target: serde_json::to_vec(&p).expect("serialises"), sealed })
    }

    pub fn in_step(&self, i: usize) -> bool {
        self.steps[i] == Step::InStep
    }

    /// Records that instance `i` now has `rev` and every credential up to `cred_gen`.
    pub fn mark_applied(&mut self, i: usize, rev: Option<String>, cred_gen: u64) {
        self.applied[i] = Applied { rev: rev.clone(), cred_gen };
        self.steps[i] = if rev.is_some() && rev == self.rev && cred_gen >= self.cred_gen {
            Step::InStep
        } else {
            Step::OutOfStep(format!(
                "has rev {} (credentials {cred_gen}), target {} (credentials {})",
                short(rev.as_deref()),
                short(self.rev.as_deref()),
                self.cred_gen
            ))
        };
    }

    /// Records what instance `i` answered to a copy of a deploy that moved the credentials from
    /// generation `old_gen` to `new_gen` (it has the new ones only if it had the old ones).
    /// Returns whether it took the deploy.
    pub fn copy_result(&mut self, i: usize, outcome: CopyOutcome, old_gen: u64, new_gen: u64) -> bool {
        let cgen = if self.applied[i].cred_gen >= old_gen { new_gen } else { self.applied[i].cred_gen };
        let took = matches!(outcome, CopyOutcome::Took { .. });
        match outcome {
            CopyOutcome::Took { rev: Some(rev) } => self.mark_applied(i, Some(rev), cgen),
            CopyOutcome::Took { rev: None } => {
                // Its revision is checked by a resync.
                self.applied[i].cred_gen = cgen;
                self.steps[i] = Step::Unknown;
            }
            CopyOutcome::Conflict => self.mark_out_of_step(i, "drifted: its flows differed from the target (409)"),
            CopyOutcome::Refused(status) => self.mark_out_of_step(i, format!("refused the deploy: {status}")),
            CopyOutcome::Failed(e) => self.mark_out_of_step(i, format!("deploy failed: {e}")),
        }
        took
    }

    pub fn mark_out_of_step(&mut self, i: usize, why: impl Into<String>) {
        self.steps[i] = Step::OutOfStep(why.into());
    }

    /// After a successful deploy on the active: the new target. Returns whether credentials
    /// changed (every other instance then needs them).
    pub fn deployed(&mut self, rev: String, flows: Option<&Value>) -> bool {
        let mut creds_changed = false;
        if let Some(Value::Array(nodes)) = flows {
            let mut stripped = Vec::with_capacity(nodes.len());
            let mut ids = std::collections::HashSet::new();
            for node in nodes {
                let mut node = node.clone();
                if let Value::Object(obj) = &mut node {
                    if let Some(id) = obj.get("id").and_then(Value::as_str) {
                        ids.insert(id.to_string());
                    }
                    if let (Some(Value::Object(c)), Some(id)) =
                        (obj.remove("credentials"), obj.get("id").and_then(Value::as_str).map(str::to_string))
                    {
                        creds_changed |= merge_credentials(&mut self.credentials, &id, &c);
                    }
                }
                stripped.push(node);
            }
            // Node-RED drops credentials of nodes that are no longer in the flows.
            let before = self.credentials.len();
            self.credentials.retain(|id, _| ids.contains(id));
            creds_changed |= self.credentials.len() != before;
            self.flows = Some(Value::Array(stripped));
        }
        if creds_changed {
            self.cred_gen += 1;
        }
        self.rev = Some(rev);
        creds_changed
    }

    /// After a config reload: the target and every kept instance's state from `old`.
    pub fn carry_from(&mut self, old: &SyncTable) {
        self.rev = old.rev.clone();
        self.flows = old.flows.clone();
        self.credentials = old.credentials.clone();
        self.cred_gen = old.cred_gen;
        for (i, id) in self.ids.iter().enumerate() {
            if let Some(j) = old.ids.iter().position(|o| o == id) {
                self.steps[i] = old.steps[j].clone();
                self.applied[i] = old.applied[j].clone();
            }
        }
    }
}

fn short(rev: Option<&str>) -> String {
    rev.map_or_else(|| "unknown".into(), |r| r.chars().take(8).collect())
}

/// Node-RED's `credentials.extract` rules: `__PWRD__` keeps the stored value, an empty or
/// blank string deletes the field, anything else replaces it. Returns whether anything changed.
pub fn merge_credentials(store: &mut Map<String, Value>, id: &str, incoming: &Map<String, Value>) -> bool {
    let entry = store.entry(id.to_string()).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(fields) = entry else { return false };
    let mut changed = false;
    for (k, v) in incoming {
        match v {
            Value::String(s) if s == "__PWRD__" => {}
            Value::String(s) if s.trim().is_empty() => changed |= fields.remove(k).is_some(),
            _ => {
                if fields.get(k) != Some(v) {
                    fields.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
        }
    }
    if fields.is_empty() {
        store.remove(id);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowgate-sync-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn credentials_merge_like_node_red() {
        let mut s = Map::new();
        let inc = |v: Value| v.as_object().unwrap().clone();
        assert!(merge_credentials(&mut s, "n1", &inc(json!({"user": "u", "password": "p"}))));
        assert!(!merge_credentials(&mut s, "n1", &inc(json!({"user": "u", "password": "__PWRD__"}))));
        assert_eq!(s["n1"], json!({"user": "u", "password": "p"}));
        assert!(merge_credentials(&mut s, "n1", &inc(json!({"password": "p2"}))));
        assert!(merge_credentials(&mut s, "n1", &inc(json!({"user": " "}))));
        assert_eq!(s["n1"], json!({"password": "p2"}));
        assert!(merge_credentials(&mut s, "n1", &inc(json!({"password": ""}))));
        assert!(!s.contains_key("n1"));
    }

    #[test]
    fn a_deploy_strips_credentials_from_flows_and_tracks_changes() {
        let mut t = SyncTable::open(vec!["a".into(), "b".into()], None, None).unwrap();
        let flows =
            json!([{"id": "n1", "type": "mqtt-broker", "credentials": {"user": "u", "password": "p"}}, {"id": "n2"}]);
        assert!(t.deployed("r1".into(), Some(&flows)));
        assert_eq!(t.cred_gen, 1);
        assert_eq!(t.flows, Some(json!([{"id": "n1", "type": "mqtt-broker"}, {"id": "n2"}])));
        // The same deploy again (password unchanged) does not bump the generation.
        let same = json!([{"id": "n1", "type": "mqtt-broker", "credentials": {"password": "__PWRD__"}}]);
        assert!(!t.deployed("r2".into(), Some(&same)));
        assert_eq!(t.cred_gen, 1);
        // Removing the node removes its credentials.
        assert!(t.deployed("r3".into(), Some(&json!([{"id": "n2"}]))));
        assert!(t.credentials.is_empty());
    }

    #[test]
    fn step_follows_applied_rev_and_credential_generation() {
        let mut t = SyncTable::open(vec!["a".into()], None, None).unwrap();
        t.deployed("r1".into(), Some(&json!([{"id": "n", "credentials": {"k": "v"}}])));
        t.mark_applied(0, Some("r1".into()), 0);
        assert!(matches!(t.steps[0], Step::OutOfStep(_)), "credentials missing");
        t.mark_applied(0, Some("r1".into()), 1);
        assert!(t.in_step(0));
        t.mark_applied(0, Some("r0".into()), 1);
        assert!(!t.in_step(0));
    }

    #[test]
    fn state_survives_a_restart_and_credentials_are_sealed() {
        let d = tmp("persist");
        let ids = vec!["a".to_string(), "b".to_string()];
        let mut t = SyncTable::open(ids.clone(), Some(&d), Some("k1")).unwrap();
        t.deployed("r1".into(), Some(&json!([{"id": "n", "credentials": {"password": "hunter2"}}])));
        t.mark_applied(1, Some("r1".into()), 1);
        t.save().unwrap();
        let raw = std::fs::read(d.join("credentials.sealed")).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("hunter2"));
        assert!(!std::fs::read_to_string(d.join("target.json")).unwrap().contains("hunter2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["credentials.sealed", "target.json"] {
                assert_eq!(std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
            }
        }
        let t2 = SyncTable::open(ids.clone(), Some(&d), Some("k1")).unwrap();
        assert_eq!(t2.rev.as_deref(), Some("r1"));
        assert_eq!(t2.credentials["n"], json!({"password": "hunter2"}));
        assert_eq!(t2.applied[1].cred_gen, 1);
        assert!(matches!(t2.steps[1], Step::Unknown), "checked again after a restart");
        let wrong = SyncTable::open(ids, Some(&d), Some("other")).err().expect("wrong key refused").to_string();
        assert!(wrong.contains("state.key"), "{wrong}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn copy_results_move_each_instance_as_its_answer_says() {
        let mut t = SyncTable::open(vec!["a".into(), "b".into(), "c".into(), "d".into()], None, None).unwrap();
        t.deployed("r1".into(), None);
        t.cred_gen = 3;
        t.applied[1].cred_gen = 2; // b has every credential up to the deploy
        assert!(t.copy_result(1, CopyOutcome::Took { rev: Some("r1".into()) }, 2, 3));
        assert_eq!((t.steps[1].clone(), t.applied[1].cred_gen), (Step::InStep, 3));
        // c missed a credential change earlier: taking this deploy does not give it that one.
        assert!(t.copy_result(2, CopyOutcome::Took { rev: Some("r1".into()) }, 2, 3));
        assert!(matches!(t.steps[2], Step::OutOfStep(_)));
        assert!(t.copy_result(3, CopyOutcome::Took { rev: None }, 0, 3), "v1: checked later");
        assert_eq!(t.steps[3], Step::Unknown);
        assert!(!t.copy_result(0, CopyOutcome::Conflict, 0, 3));
        assert!(matches!(&t.steps[0], Step::OutOfStep(w) if w.contains("409")));
        assert!(!t.copy_result(0, CopyOutcome::Refused("500 Internal Server Error".into()), 0, 3));
        assert!(matches!(&t.steps[0], Step::OutOfStep(w) if w.contains("500")));
    }
}
