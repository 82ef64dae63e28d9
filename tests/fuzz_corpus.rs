//! Replays the fuzz corpus (`fuzz/corpus/<target>/`): every input must be handled without a
//! panic. Guards the config loader, the cookie check, request routing and header hygiene,
//! the bodies flowgate parses, the state files it reads and the fast path's heads, without
//! running the fuzzer.

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{} panics", path.display());
        }
        n += 1;
    }
    assert!(n >= 5, "the {target} corpus has {n} inputs");
}

#[test]
fn the_config_corpus_never_panics() {
    replay("config", flowgate::fuzzing::config);
}

#[test]
fn the_cookie_corpus_never_panics() {
    replay("cookie", flowgate::fuzzing::cookie);
}

#[test]
fn a_genuine_cookie_is_recognised() {
    let c = flowgate::editor::cookie::CookieCodec::new(Some("fuzz"));
    let header = format!("x=1; flowgate_editor={}", c.encode("nr-a"));
    flowgate::fuzzing::cookie(header.as_bytes());
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, header.parse().unwrap());
    assert!(flowgate::editor::cookie::CookieCodec::carries(&h, "flowgate_editor", &c.encode("nr-a")));
}

#[test]
fn the_request_corpus_never_panics() {
    replay("request", flowgate::fuzzing::request);
}

#[test]
fn the_bodies_corpus_never_panics() {
    replay("bodies", flowgate::fuzzing::bodies);
}

#[test]
fn the_stored_corpus_never_panics() {
    replay("stored", flowgate::fuzzing::stored);
}

#[test]
fn the_fast_head_corpus_never_panics() {
    replay("fast_head", flowgate::fuzzing::fast_head);
}
