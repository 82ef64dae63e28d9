use super::*;

fn paths() -> NodeRedPaths {
    NodeRedPaths { admin_root: "/".into(), node_root: "/".into() }
}

fn cx<'a>(paths: &'a NodeRedPaths, trusted: &'a [Cidr]) -> Context<'a> {
    Context { paths, trusted, peer: "192.0.2.7".parse().unwrap(), tls: false, balanced: false, max_headers: 100 }
}

fn forward(raw: &str) -> (Request, String) {
    let p = paths();
    let mut out = Vec::new();
    match request(raw.as_bytes(), &cx(&p, &[]), &mut out) {
        Parsed::Forward(r) => (r, String::from_utf8(out).unwrap()),
        other => panic!("{raw:?}: {other:?}"),
    }
}

fn verdict(raw: &str) -> Parsed {
    let p = paths();
    request(raw.as_bytes(), &cx(&p, &[]), &mut Vec::new())
}

#[test]
fn a_plain_request_is_forwarded_with_its_headers_and_forwarded_for_set() {
    let raw = "GET /api/x?y=1 HTTP/1.1\r\nHost: plant.local\r\nAccept: */*\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n";
    let (r, up) = forward(raw);
    assert_eq!(r.head_len, raw.len());
    assert_eq!((r.body_len, r.idempotent, r.close), (0, true, false));
    assert_eq!(&raw[r.method.0..r.method.1], "GET");
    assert_eq!(&raw[r.target.0..r.target.1], "/api/x?y=1");
    assert_eq!(
        up,
        "GET /api/x?y=1 HTTP/1.1\r\nHost: plant.local\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: plant.local\r\n\r\n"
    );
}

#[test]
fn trusted_peers_keep_their_forwarded_headers() {
    let p = paths();
    let trusted = ["192.0.2.0/24".parse().unwrap()];
    let raw = "POST /in HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    let mut out = Vec::new();
    let Parsed::Forward(r) = request(raw.as_bytes(), &cx(&p, &trusted), &mut out) else { panic!() };
    assert_eq!((r.body_len, r.idempotent, r.close), (3, false, true));
    assert_eq!(&raw[r.head_len..], "abc");
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /in HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer\r\nContent-Length: 3\r\nx-forwarded-for: 198.51.100.1, 192.0.2.7\r\n\r\n"
    );
}

#[test]
fn what_hyper_must_decide_is_handed_to_it() {
    let hand_off = [
        // Editor routes (any letter case), absolute targets, HTTP/1.0, CONNECT.
        "GET /flows HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /FLOWS HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n[]",
        "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /x HTTP/1.0\r\nHost: h\r\n\r\n",
        "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
        // Smuggling material: two lengths, a list, TE, a sign; no Host, two Hosts.
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        // Upgrades, Expect, odd targets, malformed heads.
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        "GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost : h\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    ];
    for raw in hand_off {
        assert_eq!(verdict(raw), Parsed::HandOff, "{raw:?}");
    }
    assert_eq!(verdict("GET /x HTTP/1.1\r\nHost: h\r\n"), Parsed::Partial);
}

#[test]
fn load_balanced_sessions_go_through_hyper() {
    let p = paths();
    let mut c = cx(&p, &[]);
    c.balanced = true;
    let mut out = Vec::new();
    let eio = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: h\r\n\r\n";
    let pinned = "GET /api HTTP/1.1\r\nHost: h\r\nCookie: a=1; flowgate_affinity=v1:nr-a:x\r\n\r\n";
    let plain = "GET /api HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\n\r\n";
    assert_eq!(request(eio.as_bytes(), &c, &mut out), Parsed::HandOff);
    assert_eq!(request(pinned.as_bytes(), &c, &mut out), Parsed::HandOff);
    assert!(matches!(request(plain.as_bytes(), &c, &mut out), Parsed::Forward(_)));
    c.balanced = false;
    assert!(matches!(request(eio.as_bytes(), &c, &mut out), Parsed::Forward(_)));
}

fn resp(raw: &str, head: bool, close: bool) -> (Response, String) {
    let mut out = Vec::new();
    let r = response(raw.as_bytes(), head, close, &mut out);
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn response_framing_is_read_from_the_head() {
    let table: [(&str, bool, Response); 9] = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            false,
            Response::Head { head_len: 38, status: 200, framing: Framing::Length(5), reusable: true },
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            Response::Head { head_len: 47, status: 200, framing: Framing::Chunked, reusable: true },
        ),
        (
            "HTTP/1.1 200 OK\r\n\r\n",
            false,
            Response::Head { head_len: 19, status: 200, framing: Framing::Close, reusable: false },
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            Response::Head { head_len: 38, status: 200, framing: Framing::Empty, reusable: true },
        ),
        (
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            false,
            Response::Head { head_len: 29, status: 304, framing: Framing::Empty, reusable: true },
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            false,
            Response::Head { head_len: 38, status: 200, framing: Framing::Length(1), reusable: false },
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, Response::Bad),
        ("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false, Response::Interim(40)),
        ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, Response::Bad),
    ];
    for (raw, head, want) in table {
        assert_eq!(resp(raw, head, false).0, want, "{raw:?}");
    }
    assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Length", false, false).0, Response::Partial);
}

#[test]
fn the_client_head_loses_hop_by_hop_headers_and_says_when_it_closes() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
    let (_, out) = resp(raw, false, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n");
    let (_, out) = resp("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, true);
    assert_eq!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nconnection: close\r\n\r\n");
    let (_, out) = resp("HTTP/1.0 200 OK\r\n\r\n", false, false);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
}

/// The end of a chunked body, whichever way its bytes are split.
#[test]
fn a_chunked_body_ends_where_its_last_chunk_and_trailers_end() {
    let bodies: [(&[u8], Option<usize>); 6] = [
        (b"5\r\nhello\r\n0\r\n\r\nNEXT", Some(15)),
        (b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n", Some(51)),
        (b"A\r\n0123456789\r\n0\r\n", None),
        (b"5\r\nhelloX\r\n", None),
        (b"\r\n", None),
        (b"ffffffffffffffff1\r\n", None),
    ];
    for (body, want) in bodies {
        for split in 0..=body.len() {
            let mut c = Chunked::default();
            let first = c.feed(&body[..split]);
            let got = match first {
                Ok(Some(n)) => Ok(Some(n)),
                Ok(None) => c.feed(&body[split..]).map(|r| r.map(|n| n + split)),
                Err(e) => Err(e),
            };
            let expect_err = matches!(body, b"5\r\nhelloX\r\n" | b"\r\n" | b"ffffffffffffffff1\r\n");
            if expect_err {
                assert_eq!(got, Err(BadChunk), "{body:?} split at {split}");
            } else {
                assert_eq!(got, Ok(want), "{body:?} split at {split}");
            }
        }
    }
}
