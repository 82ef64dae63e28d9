//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test. Each must
//! return normally for any input: a panic is a bug.

use std::path::Path;

struct NoSecrets;

impl crate::config::SecretSource for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        Some("fuzz-secret".into())
    }
    fn file(&self, _: &str) -> std::io::Result<String> {
        Ok("fuzz-secret".into())
    }
}

/// The config loader: YAML syntax, types, validation and the line locator.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match crate::config::parse(text, Path::new("fuzz.yaml"), &NoSecrets) {
            Ok(c) => assert!(!c.backends.is_empty(), "a valid config has backends"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

/// The sticky-cookie decoder: never panics, and accepts only what it encoded itself.
pub fn cookie(data: &[u8]) {
    let codec = crate::editor::CookieCodec::new(Some("fuzz"));
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(id) = codec.decode(text) {
            assert_eq!(codec.encode(id), text, "only exact encodings decode");
        }
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(text) {
            h.insert(http::header::COOKIE, v);
            let _ = codec.pinned(&h, "flowgate_editor");
        }
    }
}
