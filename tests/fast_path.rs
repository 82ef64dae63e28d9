//! The HTTP/1.1 fast path against the hyper path: a corpus of requests sent as raw bytes
//! through two flowgates in front of one instance, one with `listen.fast_path` (the default)
//! and one without. The instance describes every request as it received it (method, target,
//! headers, body digest), so equal answers mean the same request arrived upstream, and the
//! client got the same status, headers (less `Date`, which hyper adds) and body.

mod support;

use std::time::Duration;

use support::fake_node_red::{EventLog, FakeNodeRed, Options};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECS: Duration = Duration::from_secs(10);

/// One response as a client sees it: status, headers (names lower-cased, sorted by name,
/// `date` left out, the editor cookie's signature masked) and the body, de-chunked.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one response from `s` (`head`: it answers a HEAD request); bytes after it stay in
/// `buf`. `None` when the connection closed first.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Answer {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(SECS, s.read(&mut chunk)).await.expect("an answer in time").unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n
    }
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(len) = r.parse(buf).expect("a well-formed response head") {
            let status = r.code.unwrap();
            let mut headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .filter(|(k, _)| k != "date")
                // Each flowgate signs its editor cookie with a key of its own.
                .map(|(k, v)| match v.split_once(';') {
                    Some((c, rest)) if c.starts_with("flowgate_editor=") => (k, format!("flowgate_editor=…;{rest}")),
                    _ => (k, v),
                })
                .collect();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let length = get("content-length").map(|v| v.parse::<usize>().unwrap());
            buf.drain(..len);
            let mut body = Vec::new();
            if head || status == 204 || status == 304 || (100..200).contains(&status) {
            } else if chunked {
                loop {
                    let line = loop {
                        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        assert!(more(s, buf).await > 0, "cut chunked body");
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buf[..line]).unwrap().split(';').next().unwrap().trim(),
                        16,
                    )
                    .unwrap();
                    buf.drain(..line + 2);
                    while buf.len() < size + 2 {
                        assert!(more(s, buf).await > 0, "cut chunk");
                    }
                    body.extend_from_slice(&buf[..size]);
                    buf.drain(..size + 2);
                    if size == 0 {
                        break;
                    }
                }
            } else if let Some(n) = length {
                while buf.len() < n {
                    assert!(more(s, buf).await > 0, "cut body");
                }
                body = buf.drain(..n).collect();
            } else {
                while more(s, buf).await > 0 {}
                body = std::mem::take(buf);
            }
            return Answer { status, headers, body };
        }
        assert!(more(s, buf).await > 0, "closed before a response: {:?}", String::from_utf8_lossy(buf));
    }
}

/// Sends `raw` on a new connection and reads `count` answers.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], count: usize, head: bool) -> Vec<Answer> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(answer(&mut s, &mut buf, head).await);
    }
    out
}

fn corpus() -> Vec<(String, Vec<u8>, usize, bool)> {
    let big = "x".repeat(200 * 1024);
    let mut c: Vec<(String, Vec<u8>, usize, bool)> = Vec::new();
    let mut add = |name: &str, raw: Vec<u8>, count: usize, head: bool| c.push((name.into(), raw, count, head));
    let s = |t: &str| t.as_bytes().to_vec();
    add(
        "plain GET",
        s("GET /mirror?x=1&y=%20 HTTP/1.1\r\nHost: plant.local\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"),
        1,
        false,
    );
    add("HEAD", s("HEAD /mirror HTTP/1.1\r\nHost: h\r\n\r\n"), 1, true);
    add(
        "small POST",
        s(
            "POST /mirror HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\":[1,2,3]}",
        ),
        1,
        false,
    );
    add(
        "200 KiB POST",
        format!("POST /mirror HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{big}", big.len()).into_bytes(),
        1,
        false,
    );
    add("empty PUT", s("PUT /mirror/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 1, false);
    add("DELETE", s("DELETE /mirror/x HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add("OPTIONS", s("OPTIONS /mirror HTTP/1.1\r\nHost: h\r\nOrigin: http://o\r\n\r\n"), 1, false);
    add(
        "hop-by-hop",
        s(
            "GET /mirror HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nTrailer: x\r\n\r\n",
        ),
        1,
        false,
    );
    add(
        "forged forwarding",
        s(
            "GET /mirror HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
        ),
        1,
        false,
    );
    add(
        "repeated and mixed case",
        s(
            "GET /mirror HTTP/1.1\r\nhOsT: h\r\nX-A: 1\r\nx-a: 2\r\nX-Mixed-Case: v\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
        ),
        1,
        false,
    );
    let mut obs = s("GET /mirror HTTP/1.1\r\nHost: h\r\nX-Obs: caf");
    obs.extend_from_slice(b"\xe9\r\n\r\n");
    add("obs-text value", obs, 1, false);
    add("chunked answer", s("GET /mirror?chunked HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add("big answer", s("GET /mirror?big HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add("204", s("GET /mirror?status=204 HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add("304", s("GET /mirror?status=304 HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add("404 with headers", s("GET /mirror?status=404&hdrs HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add(
        "socket.io in hot spare",
        s("GET /mirror/socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n\r\n"),
        1,
        false,
    );
    add("Connection: close", s("GET /mirror HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 1, false);
    add(
        "pipelined",
        s(
            "GET /mirror?a HTTP/1.1\r\nHost: h\r\n\r\nPOST /mirror?b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET /mirror?chunked HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        3,
        false,
    );
    // Handed to hyper: a chunked request, an editor route, conflicting lengths, no Host.
    add(
        "chunked request",
        s("POST /mirror HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        1,
        false,
    );
    add("editor route", s("GET /settings HTTP/1.1\r\nHost: h\r\n\r\n"), 1, false);
    add(
        "two lengths",
        s("POST /mirror HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
        1,
        false,
    );
    add(
        "smuggling TE+CL",
        s("POST /mirror HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        1,
        false,
    );
    add("HTTP/1.0", s("GET /mirror HTTP/1.0\r\nHost: h\r\n\r\n"), 1, false);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_delivers_what_the_hyper_path_delivers() {
    let log = EventLog::default();
    let fa = FakeNodeRed::start("a", Options::default(), log.clone()).await;
    let fast = start_flowgate(&yaml(&[("a", fa.url(), 100)], ""), Secrets(vec![])).await;
    let slow = start_flowgate(&yaml(&[("a", fa.url(), 100)], "listen: { fast_path: false }\n"), Secrets(vec![])).await;
    eventually(SECS, "a active", || async { active(&fast).await.as_deref() == Some("a") }).await;
    eventually(SECS, "a active", || async { active(&slow).await.as_deref() == Some("a") }).await;
    let corpus = corpus();
    for (name, raw, count, head) in &corpus {
        let via_hyper = exchange(slow.proxy_addr, raw, *count, *head).await;
        let via_fast = exchange(fast.proxy_addr, raw, *count, *head).await;
        assert_eq!(via_fast, via_hyper, "{name}: fast path (left) and hyper path (right) differ");
    }
    // The answers are real ones, and the fast path served what it should.
    let plain = exchange(fast.proxy_addr, &corpus[0].1, 1, false).await.remove(0);
    let text = String::from_utf8_lossy(&plain.body);
    assert_eq!(plain.status, 200);
    assert!(text.starts_with("GET /mirror?x=1&y=%20 HTTP/1.1\n"), "{text}");
    assert!(text.contains("x-forwarded-for: 127.0.0.1\n") && text.contains("x-forwarded-host: plant.local"), "{text}");
    let m = metrics(&fast).await;
    let (forwarded, handed) = (
        sample(&m, "flowgate_fast_path_requests_total").unwrap(),
        sample(&m, "flowgate_fast_path_handoffs_total").unwrap(),
    );
    assert_eq!((forwarded, handed), (22.0, 5.0), "requests forwarded by the fast path, and handed to hyper");
    let m = metrics(&slow).await;
    assert_eq!(sample(&m, "flowgate_fast_path_requests_total"), Some(0.0));
}
