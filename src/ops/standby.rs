//! `flowgate prepare-standby`: make a Node-RED instance boot with its flows stopped.
//!
//! Node-RED persists the flow state in `<userDir>/.config.runtime.json` (`runtimeFlowState`)
//! and reads it at boot. A crashed active would otherwise reboot with its flows running, next
//! to the new active. Run this before every start of an instance (systemd `ExecStartPre`).
//! It sets `"runtimeFlowState": "stop"` in the file and its `.backup`, keeping every other key
//! (`_credentialSecret`, `instanceId`), and writes atomically (temp file, fsync, rename) with
//! mode 0600 because the file holds the credential secret.

use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a JSON object ({detail}); fix or remove it")]
    Invalid { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandbyError + '_ {
    move |source| StandbyError::Io { path: path.to_owned(), source }
}

pub fn prepare_standby(user_dir: &Path) -> Result<(), StandbyError> {
    fs::create_dir_all(user_dir).map_err(io(user_dir))?;
    for name in [".config.runtime.json", ".config.runtime.json.backup"] {
        let path = user_dir.join(name);
        let mut doc = match fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => {
                    return Err(StandbyError::Invalid { path, detail: "not an object".into() });
                }
                Err(e) => {
                    return Err(StandbyError::Invalid { path, detail: e.to_string() });
                }
            },
            // Node-RED writes the backup itself; only the main file must exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.ends_with(".backup") => {
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        doc.insert("runtimeFlowState".into(), "stop".into());
        let text = serde_json::to_string_pretty(&doc).expect("a JSON map serialises");
        crate::files::write_private(&path, text.as_bytes())
            .map_err(|e| StandbyError::Io { path: e.path, source: e.source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowgate-standby-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn sets_stop_and_keeps_other_keys() {
        let d = tempdir("keep");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(".config.runtime.json"),
            r#"{"instanceId":"abc","_credentialSecret":"s","runtimeFlowState":"start"}"#,
        )
        .unwrap();
        fs::write(d.join(".config.runtime.json.backup"), r#"{"runtimeFlowState":"start"}"#).unwrap();
        prepare_standby(&d).unwrap();
        for f in [".config.runtime.json", ".config.runtime.json.backup"] {
            let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(d.join(f)).unwrap()).unwrap();
            assert_eq!(v["runtimeFlowState"], "stop", "{f}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(d.join(".config.runtime.json")).unwrap()).unwrap();
        assert_eq!(v["instanceId"], "abc");
        assert_eq!(v["_credentialSecret"], "s");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(d.join(".config.runtime.json")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn creates_the_file_in_a_new_user_dir() {
        let d = tempdir("new");
        prepare_standby(&d).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(d.join(".config.runtime.json")).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"runtimeFlowState": "stop"}));
        assert!(!d.join(".config.runtime.json.backup").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_corrupt_file_and_names_it() {
        let d = tempdir("bad");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(".config.runtime.json"), "{oops").unwrap();
        let err = prepare_standby(&d).unwrap_err().to_string();
        assert!(err.contains(".config.runtime.json"), "{err}");
        assert_eq!(fs::read_to_string(d.join(".config.runtime.json")).unwrap(), "{oops", "left untouched");
        fs::remove_dir_all(&d).unwrap();
    }
}
