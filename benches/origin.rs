//! A fast origin standing in for a Node-RED instance in benchmarks: `GET <any>` answers a
//! small 200, `POST <any>` reads the body and answers its length, the flow-state and settings
//! endpoints answer like a started Node-RED (so flowgate and HAProxy health checks pass), and
//! `GET /ws` upgrades and holds the connection. One thread.
//! Usage: bench-origin PORT NAME

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn handle(name: &'static str, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    use std::sync::atomic::Ordering::Relaxed;
    let state = |s: bool| Bytes::from_static(if s { br#"{"state":"start"}"# } else { br#"{"state":"stop"}"# });
    let path = req.uri().path();
    let body: Bytes = match (req.method().as_str(), path) {
        ("GET", "/flows/state") => state(STARTED.load(Relaxed)),
        ("POST", "/flows/state") => {
            let b = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let start = b.windows(7).any(|w| w == b"\"start\"");
            STARTED.store(start, Relaxed);
            state(start)
        }
        ("GET", "/settings") => Bytes::from_static(br#"{"runtimeState":{"enabled":true}}"#),
        ("GET", "/flows") => Bytes::from_static(br#"{"flows":[],"rev":"bench"}"#),
        ("POST", "/flows") => Bytes::from_static(br#"{"rev":"bench"}"#),
        ("GET", "/ws") => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(u) = up.await {
                    let mut io = TokioIo::new(u);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tokio::io::AsyncReadExt::read(&mut io, &mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            });
            let accept = key.map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()));
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
            if let Some(a) = accept {
                r.headers_mut().insert("sec-websocket-accept", a.parse().unwrap());
            }
            return Ok(r);
        }
        ("POST", _) => {
            let n = req.into_body().collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
            Bytes::from(format!("{n}"))
        }
        _ => Bytes::from(name),
    };
    Ok(Response::new(Full::new(body)))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).expect("usage: bench-origin PORT NAME");
    let name: &'static str = Box::leak(args.next().unwrap_or_else(|| "origin".into()).into_boxed_str());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            let Ok((s, _)) = l.accept().await else { continue };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = b.serve_connection_with_upgrades(TokioIo::new(s), service_fn(move |r| handle(name, r))).await;
            });
        }
    });
}
