//! Private files written atomically: the state flowgate keeps (`target.json`, sealed
//! credentials, remembered logins) and the Node-RED files `prepare-standby` edits.
//!
//! A write goes to `<name>.flowgate-tmp` beside the file (mode 0600), is fsynced, then renamed
//! over the file: a crash leaves either the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What failed, and on which path (the temporary file or the target).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `data` atomically; the file is readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".flowgate-tmp");
    let tmp = path.with_file_name(name);
    let at = |p: &Path| {
        let p = p.to_owned();
        move |source| WriteError { path: p, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(at(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_keeps_it_private() {
        let d = std::env::temp_dir().join(format!("flowgate-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("state.json");
        std::fs::write(&p, "old and longer").unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert!(!d.join("state.json.flowgate-tmp").exists(), "nothing left beside it");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let err = write_private(&d.join("missing/dir/x"), b"").unwrap_err();
        assert!(err.to_string().contains("x.flowgate-tmp"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
