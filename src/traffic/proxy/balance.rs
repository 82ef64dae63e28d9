//! Load-balanced mode: which instance of the rotation serves a request (pure).
//!
//! A request that names an instance (the editor's cookie, or the affinity cookie of a browser
//! session that uses socket.io) goes there while it is in rotation and usable. Every other
//! request goes to the usable instance with the fewest requests outstanding, ties broken in
//! turn (so sequential requests alternate). Against plain round robin, with two instances
//! doing 20 ms of event-loop work per request (`tests/real_balanced.rs`), both came within a
//! few percent of what the instances gave without flowgate on a 2-core machine (the figures
//! are in the README); least outstanding is kept because an instance slowed by garbage
//! collection or a long flow then does not collect a queue while the other idles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;

use crate::editor::cookie::CookieCodec;
use crate::state::{Active, Instance};

/// The instance for one request, or `None` when no instance in `rotation` is usable.
pub fn pick(
    rotation: &[Arc<Active>],
    pin: Option<usize>,
    usable: impl Fn(&Arc<Active>) -> bool,
    outstanding: impl Fn(usize) -> usize,
    next: &AtomicUsize,
) -> Option<Arc<Active>> {
    if let Some(a) = pin.and_then(|p| rotation.iter().find(|a| a.index == p)).filter(|a| usable(a)) {
        return Some(a.clone());
    }
    let n = rotation.len();
    if n == 0 {
        return None;
    }
    let start = next.fetch_add(1, Ordering::Relaxed);
    let mut best: Option<(&Arc<Active>, usize)> = None;
    for a in (0..n).map(|k| &rotation[(start + k) % n]).filter(|a| usable(a)) {
        let o = outstanding(a.index);
        if best.is_none_or(|(_, b)| o < b) {
            best = Some((a, o));
        }
    }
    best.map(|(a, _)| a.clone())
}

/// The instance the cookie `name` pins, if the request carries a valid one.
pub fn pinned(headers: &HeaderMap, name: &str, instances: &[Instance]) -> Option<usize> {
    if !headers.contains_key(http::header::COOKIE) {
        return None;
    }
    instances.iter().position(|i| CookieCodec::carries(headers, name, &i.pin.value))
}

/// An engine.io (socket.io) request: its query names the protocol version.
pub fn engine_io(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| q.split('&').any(|kv| kv.starts_with("EIO=")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn rotation(indexes: &[usize]) -> Vec<Arc<Active>> {
        let config = crate::config::parse(
            "backends: [{id: a, url: \"http://127.0.0.1:1\"}, {id: b, url: \"http://127.0.0.1:2\"}, {id: c, url: \"http://127.0.0.1:3\"}]\nmode: load-balanced\n",
            std::path::Path::new("t.yaml"),
            &crate::config::System,
        )
        .unwrap();
        indexes
            .iter()
            .map(|&index| {
                let b = &config.backends[index];
                Arc::new(Active {
                    index,
                    backend: Arc::new(crate::backend::Backend::new(b, &config.node_red, None)),
                    failed: CancellationToken::new(),
                    demoted: CancellationToken::new(),
                })
            })
            .collect()
    }

    fn picks(r: &[Arc<Active>], pin: Option<usize>, skip: Option<usize>, n: usize) -> Vec<Option<usize>> {
        let next = AtomicUsize::new(0);
        (0..n).map(|_| pick(r, pin, |a| Some(a.index) != skip, |_| 0, &next).map(|a| a.index)).collect()
    }

    #[test]
    fn requests_go_round_robin_pinned_ones_stay_and_unusable_ones_are_passed_over() {
        let r = rotation(&[0, 2]);
        type Row = (Option<usize>, Option<usize>, Vec<Option<usize>>);
        let table: [Row; 6] = [
            (None, None, vec![Some(0), Some(2), Some(0), Some(2)]),
            (Some(2), None, vec![Some(2); 4]),
            // Pinned to an instance out of rotation: spread like any other.
            (Some(1), None, vec![Some(0), Some(2), Some(0), Some(2)]),
            // Pinned to one that failed this request: the others.
            (Some(2), Some(2), vec![Some(0); 4]),
            (None, Some(0), vec![Some(2); 4]),
            (None, None, vec![Some(0), Some(2), Some(0), Some(2)]),
        ];
        for (pin, skip, want) in table {
            assert_eq!(picks(&r, pin, skip, 4), want, "pin {pin:?}, unusable {skip:?}");
        }
        assert_eq!(picks(&rotation(&[]), None, None, 2), vec![None, None]);
        // The fewest outstanding requests wins over the turn.
        let next = AtomicUsize::new(0);
        let busy = |i: usize| if i == 0 { 3 } else { 1 };
        let got: Vec<_> = (0..4).map(|_| pick(&r, None, |_| true, busy, &next).map(|a| a.index)).collect();
        assert_eq!(got, vec![Some(2); 4]);
        assert_eq!(picks(&rotation(&[1]), None, Some(1), 2), vec![None, None], "nothing usable");
    }

    #[test]
    fn engine_io_requests_are_told_by_their_query() {
        let yes = ["/socket.io/?EIO=4&transport=polling", "/dashboard/socket.io/?transport=polling&EIO=4&sid=x"];
        let no = ["/socket.io/", "/api?x=EIO=4", "/hello?eio=4"];
        for u in yes {
            assert!(engine_io(&u.parse().unwrap()), "{u}");
        }
        for u in no {
            assert!(!engine_io(&u.parse().unwrap()), "{u}");
        }
    }
}
