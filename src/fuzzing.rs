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

/// The sticky-cookie check: never panics, and accepts only the exact cookie it issued.
pub fn cookie(data: &[u8]) {
    let codec = crate::editor::cookie::CookieCodec::new(Some("fuzz"));
    let issued = codec.encode("nr-a");
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, v);
        if crate::editor::cookie::CookieCodec::carries(&h, "flowgate_editor", &issued) {
            assert!(data.windows(issued.len()).any(|w| w == issued.as_bytes()), "only the issued value is accepted");
        }
    }
}
