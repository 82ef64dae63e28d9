//! Headless Chromium for page tests: Debian's chromium driven by playwright-core, both
//! installed by `scripts/install-browser.sh` (no browser download).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Installs what is missing and returns the playwright-core folder.
pub fn playwright() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-browser.sh");
    let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().expect("run install-browser.sh");
    assert!(out.status.success(), "installing chromium / playwright-core failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
