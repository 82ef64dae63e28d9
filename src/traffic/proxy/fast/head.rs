//! HTTP/1.1 heads on the forwarding fast path (pure): whether a request head can be forwarded
//! as bytes, the upstream head with targeted edits, the response's framing and the head the
//! client gets, and the end of a chunked body.
//!
//! Anything this path does not handle itself is handed to hyper, bytes and all (see
//! [`Parsed::HandOff`]): so every rule hyper enforces (a malformed head, conflicting lengths,
//! `Transfer-Encoding` on a request, an upgrade, `Expect`) still holds, answered exactly as
//! before.

use std::net::IpAddr;

use crate::config::{Cidr, NodeRedPaths};
use crate::traffic::proxy::route::{self, RouteClass};

/// The most headers a fast-path head may carry; a head with more is handed to hyper.
pub const MAX_HEADERS: usize = 100;
/// Hop-by-hop names the `Connection` header of one head may list before it is handed to hyper.
const MAX_CONNECTION_NAMES: usize = 8;

/// What to do with the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not for this path: hyper serves this request, and the connection from here on.
    HandOff,
    /// Forward it: the upstream head was written to `out`.
    Forward(Request),
}

/// A request head the fast path forwards.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Request {
    /// Bytes of the head in the buffer, through the empty line.
    pub head_len: usize,
    /// `Content-Length` (0 without one).
    pub body_len: u64,
    /// GET, HEAD or OPTIONS: repeated on another instance when it failed without an answer.
    pub idempotent: bool,
    pub head: bool,
    /// The client asked to close after this request.
    pub close: bool,
    /// Where the method and the request target are in the buffer (for the access log).
    pub method: (usize, usize),
    pub target: (usize, usize),
}

/// What a request is checked and rewritten against.
pub struct Context<'a> {
    pub paths: &'a NodeRedPaths,
    pub trusted: &'a [Cidr],
    pub peer: IpAddr,
    pub tls: bool,
    /// Load-balanced mode: socket.io sessions and affinity cookies go through hyper.
    pub balanced: bool,
    pub max_headers: usize,
}

/// Bytes a request target may hold on this path: visible ASCII but the characters `http::Uri`
/// refuses or that never appear in a well-formed target. A target with any other byte goes to
/// hyper, which decides.
fn target_byte(b: u8) -> bool {
    matches!(b, b'!' | b'$'..=b';' | b'=' | b'?'..=b'[' | b']' | b'_' | b'a'..=b'z' | b'~')
}

fn offsets(buf: &[u8], s: &str) -> (usize, usize) {
    let start = s.as_ptr() as usize - buf.as_ptr() as usize;
    (start, start + s.len())
}

/// A header value as `http::HeaderValue::to_str` reads it: visible ASCII and tabs only.
fn text(v: &[u8]) -> Option<&str> {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)).then(|| std::str::from_utf8(v).ok()).flatten()
}

fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// Headers never forwarded (the hyper path's list, RFC 9110 §7.6.1, and `Upgrade`, which this
/// path never forwards), besides those `Connection` names.
fn hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade")
        || crate::traffic::proxy::forward::HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Parses the request head at the start of `buf` and, when this path forwards it, writes the
/// upstream head to `out` (cleared first): the request line and headers as they came, less
/// hop-by-hop headers, with `X-Forwarded-For/Proto/Host` set as the hyper path sets them.
pub fn request(buf: &[u8], cx: &Context<'_>, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let n = cx.max_headers.clamp(1, MAX_HEADERS);
    let mut req = httparse::Request::new(&mut headers[..n]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOff,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Parsed::HandOff };
    if method == "CONNECT" || !target.starts_with('/') || !target.bytes().all(target_byte) {
        return Parsed::HandOff;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if route::classify(path, false, cx.paths) != RouteClass::Runtime {
        return Parsed::HandOff;
    }
    if cx.balanced && query.split('&').any(|kv| kv.starts_with("EIO=")) {
        return Parsed::HandOff;
    }
    let mut host = None;
    let mut body_len = None;
    let mut close = false;
    let mut named: [&[u8]; MAX_CONNECTION_NAMES] = [b""; MAX_CONNECTION_NAMES];
    let mut named_n = 0;
    let (mut xff, mut xfp, mut xfh) = (None, false, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.replace(h.value).is_some() {
                return Parsed::HandOff;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let v = h.value;
            if body_len.is_some() || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Parsed::HandOff;
            }
            body_len = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::HandOff;
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") || named_n == MAX_CONNECTION_NAMES {
                    return Parsed::HandOff;
                } else {
                    named[named_n] = t;
                    named_n += 1;
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case("x-forwarded-proto") {
            xfp = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-host") {
            xfh = true;
        } else if cx.balanced && name.eq_ignore_ascii_case("cookie") {
            let affinity = crate::editor::cookie::AFFINITY_COOKIE.as_bytes();
            if h.value.windows(affinity.len()).any(|w| w == affinity) {
                return Parsed::HandOff;
            }
        }
    }
    let Some(host) = host else { return Parsed::HandOff };
    let trust = !cx.trusted.is_empty() && cx.trusted.iter().any(|c| c.contains(cx.peer));
    let listed = |name: &str| named[..named_n].iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()));
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if hop_by_hop(name) || listed(name) {
            continue;
        }
        let replaced = name.eq_ignore_ascii_case("x-forwarded-for")
            || (name.eq_ignore_ascii_case("x-forwarded-proto") && !trust)
            || (name.eq_ignore_ascii_case("x-forwarded-host") && !trust);
        if replaced {
            continue;
        }
        header(out, name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if trust && let Some(prev) = xff.and_then(text) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    write_ip(out, cx.peer);
    out.extend_from_slice(b"\r\n");
    if !(trust && xfp) {
        out.extend_from_slice(if cx.tls { b"x-forwarded-proto: https\r\n" } else { b"x-forwarded-proto: http\r\n" });
    }
    if !(trust && xfh) {
        header(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Forward(Request {
        head_len,
        body_len: body_len.unwrap_or(0),
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS"),
        head: method == "HEAD",
        close,
        method: offsets(buf, method),
        target: offsets(buf, target),
    })
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    let _ = write!(out, "{ip}");
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    /// Chunked, forwarded as it comes ([`Chunked`] finds its end).
    Chunked,
    /// Until the instance closes: the client connection closes after it too.
    Close,
}

/// A response head from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    Partial,
    /// Not a response this path can pass on (a malformed head, conflicting lengths, a 101).
    Bad,
    /// An interim (1xx) response: dropped, the real one follows (as hyper's client does).
    Interim(usize),
    Head {
        head_len: usize,
        status: u16,
        framing: Framing,
        /// The instance keeps the connection open after this response.
        reusable: bool,
    },
}

/// Parses the response head at the start of `buf` (`head`: the request was a HEAD) and, for a
/// final one, writes the client's head to `out` (cleared first): the status line and headers
/// less hop-by-hop ones, `Transfer-Encoding` kept for a chunked body passed through, and
/// `Connection: close` when the client connection ends after it (`close`, or a body that runs
/// until the instance closes).
pub fn response(buf: &[u8], head: bool, close: bool, out: &mut Vec<u8>) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(_) => return Response::Bad,
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else { return Response::Bad };
    match status {
        // Three digits, as `http::StatusCode` takes them; a 101 answers no request sent here.
        0..=99 | 1000.. | 101 => return Response::Bad,
        100..=199 => return Response::Interim(head_len),
        _ => {}
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut reusable = version == 1;
    let mut named: [&[u8]; MAX_CONNECTION_NAMES] = [b""; MAX_CONNECTION_NAMES];
    let mut named_n = 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            for t in tokens(h.value) {
                if t.is_empty() || t.len() > 18 || !t.iter().all(u8::is_ascii_digit) {
                    return Response::Bad;
                }
                let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                if length.replace(n).is_some_and(|m| m != n) {
                    return Response::Bad;
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(tokens(h.value).last().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if named_n < MAX_CONNECTION_NAMES {
                    named[named_n] = t;
                    named_n += 1;
                } else {
                    return Response::Bad;
                }
            }
        }
    }
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::Close {
        reusable = false;
    }
    let listed = |name: &str| named[..named_n].iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes()));
    out.clear();
    {
        use std::io::Write;
        let _ = write!(out, "HTTP/1.1 {status} ");
    }
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let keep = if name.eq_ignore_ascii_case("transfer-encoding") {
            framing == Framing::Chunked
        } else if name.eq_ignore_ascii_case("content-length") {
            chunked.is_none()
        } else {
            !(hop_by_hop(name) || listed(name))
        };
        if keep {
            header(out, name.as_bytes(), h.value);
        }
    }
    if close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Response::Head { head_len, status, framing, reusable }
}

/// Finds the end of a chunked body in the bytes passing through (RFC 9112 §7.1), without
/// changing them: sizes, extensions, data, and the trailer section.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: hex digits read so far and their value.
    #[default]
    Size,
    Digits(u8, u64),
    /// After the size: an extension or whitespace, up to CR.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that cannot be passed on.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Chunked {
    /// Reads `bytes`, the next part of the body: `Some(n)` when the body ends after its first
    /// `n` bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Size => match hex(b) {
                    Some(d) => State::Digits(1, d),
                    None => return Err(BadChunk),
                },
                State::Digits(n, v) => match hex(b) {
                    Some(_) if n >= 15 => return Err(BadChunk),
                    Some(d) => State::Digits(n + 1, v << 4 | d),
                    None => Self::after_size(b, v)?,
                },
                State::Extension(v) => Self::after_size(b, v)?,
                State::SizeLf(v) => match b {
                    b'\n' if v == 0 => State::TrailerStart,
                    b'\n' => State::Data(v),
                    _ => return Err(BadChunk),
                },
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left { State::DataCr } else { State::Data(left - take) };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::DataCr | State::DataLf => return Err(BadChunk),
                State::TrailerStart if b == b'\r' => State::EndLf,
                State::TrailerStart | State::Trailer if b == b'\r' => State::TrailerLf,
                State::TrailerStart | State::Trailer => State::Trailer,
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::TrailerLf | State::EndLf => return Err(BadChunk),
                State::Done => return Ok(Some(0)),
            };
            i += 1;
        }
        Ok(None)
    }

    /// After the last hex digit of a size: CR, or an extension (`;…`) or whitespace before it.
    fn after_size(b: u8, v: u64) -> Result<State, BadChunk> {
        match b {
            b'\r' => Ok(State::SizeLf(v)),
            b'\n' => Err(BadChunk),
            b';' | b' ' | b'\t' => Ok(State::Extension(v)),
            _ if matches!(b, 0x21..=0x7e | 0x80..=0xff) => Ok(State::Extension(v)),
            _ => Err(BadChunk),
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
