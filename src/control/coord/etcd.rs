//! The etcd session of one replica.
//!
//! Keys under the configured prefix:
//! - `leader/…`: etcd's election; the controller's leader key lives under its lease, and the
//!   key's create revision is the controller's epoch (it only grows).
//! - `record`: the active record (JSON), written only in a transaction that compares the
//!   leader key's create revision, so a deposed controller's write fails.
//! - `replicas/<id>`: one key per replica under its lease (`/status` lists them).
//! - `suspect/<instance>`: a replica saw `instance` fail; under the writer's lease.
//! - `forward/<id>`: where the replica takes editor writes forwarded by followers
//!   (`cluster.advertise`); under its lease.
//! - `tokens/<sha256 of a token>`: an editor login (user, permissions, expiry), written by the
//!   replica it went through, mirrored by every replica; expired ones are swept by each new
//!   controller.
//! - `state/credentials`: the remembered credentials, sealed with `state.key`, written by the
//!   controller (guarded like the record) and read by each new controller.
//!
//! Timing: the lease is renewed every third of its TTL. A controller that has not had a renewal
//! confirmed for half the TTL steps down (tells the driver `Leadership(None)`) before the lease
//! can expire and another replica take over; every call to etcd is bounded by a quarter of
//! the TTL so that nothing here delays that. After a failed session the replica reconnects
//! every 500 ms; meanwhile it keeps routing by the last record it saw (fail static).

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, LeaderKey, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{FromStore, StoreEnds, StoreView, ToStore};
use crate::config::ClusterConfig;
use crate::control::cluster::{InstanceId, Record};

/// Runs sessions until `cancel`; a clean stop revokes the lease, so another replica takes over
/// at once instead of after the TTL.
pub async fn run(cfg: ClusterConfig, ends: StoreEnds, cancel: CancellationToken) {
    let StoreEnds { to_driver, mut from_driver, lease } = ends;
    let mut view = StoreView::default();
    loop {
        let mut leading = false;
        let err = session(&cfg, &to_driver, &mut from_driver, &lease, &mut view, &mut leading, &cancel).await;
        if leading {
            let _ = to_driver.send(FromStore::Leadership(None));
        }
        if cancel.is_cancelled() {
            return;
        }
        warn!(error = %err, "etcd session ended; routing by the last known record until it is back");
        view = StoreView { connected: false, error: Some(err), ..view };
        let _ = to_driver.send(FromStore::View(view.clone()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

struct Keys {
    election: String,
    record: String,
    replicas: String,
    suspect: String,
    forward: String,
    credentials: String,
    tokens: String,
    me: String,
}

impl Keys {
    fn new(cfg: &ClusterConfig) -> Self {
        let p = &cfg.prefix;
        Keys {
            election: format!("{p}leader"),
            record: format!("{p}record"),
            replicas: format!("{p}replicas/"),
            suspect: format!("{p}suspect/"),
            forward: format!("{p}forward/"),
            credentials: format!("{p}state/credentials"),
            tokens: format!("{p}tokens/"),
            me: format!("{p}replicas/{}", cfg.id),
        }
    }
}

/// One session: connect, lease, register, watch, campaign, and serve the driver until
/// something fails. Returns why it ended.
async fn session(
    cfg: &ClusterConfig,
    to_driver: &tokio::sync::mpsc::UnboundedSender<FromStore>,
    from_driver: &mut tokio::sync::mpsc::UnboundedReceiver<ToStore>,
    clock: &super::LeaseClock,
    view: &mut StoreView,
    leading: &mut bool,
    cancel: &CancellationToken,
) -> String {
    let ttl = cfg.lease_ttl;
    let op = ttl / 4;
    let keys = Keys::new(cfg);
    // No client-wide request timeout: the campaign blocks until this replica wins. Every other
    // call is bounded here, one by one.
    let opts = options(cfg, op);
    let setup = async {
        let mut client = Client::connect(&cfg.etcd, Some(opts)).await?;
        let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
        let (keeper, acks) = client.lease_keep_alive(lease).await?;
        client.put(keys.me.as_str(), cfg.id.as_str(), Some(PutOptions::new().with_lease(lease))).await?;
        let forward = format!("{}{}", keys.forward, cfg.id);
        client.put(forward, cfg.advertise.as_str(), Some(PutOptions::new().with_lease(lease))).await?;
        if let Some(kv) = client.get(keys.record.as_str(), None).await?.kvs().first()
            && let Ok(r) = serde_json::from_slice::<Record>(kv.value())
        {
            let _ = to_driver.send(FromStore::Record(r));
        }
        let watch = client.watch(cfg.prefix.as_str(), Some(WatchOptions::new().with_prefix())).await?;
        Ok::<_, etcd_client::Error>((client, lease, keeper, acks, watch))
    };
    let r = match timeout(ttl, setup).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from etcd within {ttl:?}")),
    };
    let (client, lease, mut keeper, mut acks, mut watch) = match r {
        Ok(x) => x,
        Err(e) => return e,
    };
    info!(replica = %cfg.id, "etcd session started");
    *view = StoreView { connected: true, error: None, ..Default::default() };
    refresh(&client, &keys, view, to_driver).await;
    let mut c = client.clone();
    match timeout(ttl, c.get(keys.tokens.as_str(), Some(GetOptions::new().with_prefix()))).await {
        Ok(Ok(r)) => {
            for kv in r.kvs() {
                if let Some(msg) = token_message(&keys, kv.key(), Some(kv.value())) {
                    let _ = to_driver.send(msg);
                }
            }
        }
        Ok(Err(e)) => return format!("reading the editor logins: {e}"),
        Err(_) => return "reading the editor logins timed out".into(),
    }

    let mut campaign = Box::pin({
        let (mut c, name, id) = (client.clone(), keys.election.clone(), cfg.id.clone());
        async move { c.campaign(name, id, lease).await }
    });
    let mut leader: Option<LeaderKey> = None;
    let mut last_ok = Instant::now();
    clock.renewed(last_ok);
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let mut c = client.clone();
                let _ = timeout(op, c.lease_revoke(lease)).await;
                return "shutting down".into();
            }
            _ = tick.tick() => {
                if last_ok.elapsed() > ttl / 2 {
                    return format!("no lease renewal confirmed for {:?}", last_ok.elapsed());
                }
                if timeout(op, keeper.keep_alive()).await.map_or(true, |r| r.is_err()) {
                    return "cannot send a lease renewal".into();
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) if a.ttl() > 0 => {
                    last_ok = Instant::now();
                    clock.renewed(last_ok);
                }
                Ok(Some(_)) => return "the lease expired".into(),
                Ok(None) => return "the lease renewal stream ended".into(),
                Err(e) => return format!("lease renewal: {e}"),
            },
            won = &mut campaign, if leader.is_none() => match won {
                Ok(mut r) => {
                    let Some(key) = r.take_leader() else { return "campaign ended without a leader key".into() };
                    let epoch = key.rev() as u64;
                    info!(replica = %cfg.id, epoch, "this replica is the controller");
                    leader = Some(key);
                    *leading = true;
                    let mut c = client.clone();
                    match timeout(op, c.get(keys.credentials.as_str(), None)).await {
                        Ok(Ok(r)) => {
                            if let Some(kv) = r.kvs().first() {
                                let _ = to_driver.send(FromStore::Credentials(kv.value().to_vec()));
                            }
                        }
                        Ok(Err(e)) => return format!("reading the shared credentials: {e}"),
                        Err(_) => return "reading the shared credentials timed out".into(),
                    }
                    let _ = to_driver.send(FromStore::Leadership(Some(epoch)));
                    sweep_tokens(&client, &keys, op).await;
                    refresh(&client, &keys, view, to_driver).await;
                }
                Err(e) => return format!("campaign: {e}"),
            },
            msg = watch.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return "the watch ended".into(),
                    Err(e) => return format!("watch: {e}"),
                };
                let mut membership = false;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    if key == keys.record && ev.event_type() == EventType::Put {
                        match serde_json::from_slice::<Record>(kv.value()) {
                            Ok(r) => drop(to_driver.send(FromStore::Record(r))),
                            Err(e) => warn!(error = %e, "ignoring an unreadable active record"),
                        }
                    } else if key.starts_with(&keys.tokens) {
                        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                        if let Some(msg) = token_message(&keys, kv.key(), value) {
                            let _ = to_driver.send(msg);
                        }
                    } else if let Some(id) = key.strip_prefix(&keys.suspect) {
                        if ev.event_type() == EventType::Put {
                            let _ = to_driver.send(FromStore::Suspect(InstanceId::from(id)));
                        }
                    } else {
                        membership = true;
                    }
                }
                if membership {
                    refresh(&client, &keys, view, to_driver).await;
                }
            }
            cmd = from_driver.recv() => {
                let Some(cmd) = cmd else { return "flowgate is shutting down".into() };
                let mut c = client.clone();
                match cmd {
                    ToStore::Publish(_) | ToStore::Credentials(_) if leader.is_none() => {}
                    ToStore::Publish(record) => {
                        let value = serde_json::to_vec(&record).expect("a record serialises");
                        if let Err(e) = guarded_put(&mut c, leader.as_ref(), &keys.record, value, op).await {
                            return format!("record write: {e}");
                        }
                    }
                    ToStore::Token { hash, info } => {
                        let key = format!("{}{hash}", keys.tokens);
                        let done = match info {
                            Some(i) => timeout(op, c.put(key, serde_json::to_vec(&i).expect("serialises"), None)).await.map(|r| r.map(drop)),
                            None => timeout(op, c.delete(key, None)).await.map(|r| r.map(drop)),
                        };
                        // Not worth the session (and a controller's leadership): the login
                        // still works through this replica; the others learn it if etcd
                        // takes the next one.
                        match done {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => warn!(error = %e, "cannot share an editor login through etcd"),
                            Err(_) => warn!("sharing an editor login through etcd timed out"),
                        }
                    }
                    ToStore::Credentials(sealed) => {
                        if let Err(e) = guarded_put(&mut c, leader.as_ref(), &keys.credentials, sealed, op).await {
                            return format!("credentials write: {e}");
                        }
                    }
                    ToStore::Resign => {
                        let _ = timeout(op, c.lease_revoke(lease)).await;
                        return "stepped down: the lease renewal was not fresh when a command was due".into();
                    }
                    ToStore::Suspect(id) => {
                        let key = format!("{}{id}", keys.suspect);
                        let put = c.put(key, cfg.id.as_str(), Some(PutOptions::new().with_lease(lease)));
                        match timeout(op, put).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return format!("suspect write: {e}"),
                            Err(_) => return "suspect write timed out".into(),
                        }
                    }
                }
            }
        }
    }
}

/// The driver's message for one `tokens/<hash>` key (`value` None: deleted).
fn token_message(keys: &Keys, key: &[u8], value: Option<&[u8]>) -> Option<FromStore> {
    let hash = String::from_utf8_lossy(key).strip_prefix(&keys.tokens)?.to_string();
    let info = match value {
        Some(v) => Some(serde_json::from_slice(v).ok()?),
        None => None,
    };
    Some(FromStore::Token { hash, info })
}

/// A new controller deletes the logins that expired (each replica forgets them by itself).
async fn sweep_tokens(client: &Client, keys: &Keys, op: Duration) {
    let mut c = client.clone();
    let Ok(Ok(r)) = timeout(op, c.get(keys.tokens.as_str(), Some(GetOptions::new().with_prefix()))).await else {
        return;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for kv in r.kvs() {
        let expired = serde_json::from_slice::<crate::editor::logins::TokenInfo>(kv.value())
            .map_or(true, |i| i.expires_unix <= now);
        if expired {
            let _ = timeout(op, c.delete(kv.key(), None)).await;
        }
    }
}

/// Writes `key` only while `leader` still holds the leadership (a deposed controller's write
/// fails).
async fn guarded_put(
    c: &mut Client,
    leader: Option<&LeaderKey>,
    key: &str,
    value: Vec<u8>,
    op: Duration,
) -> Result<(), String> {
    let leader = leader.ok_or("not the controller")?;
    let guard = Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev());
    let txn = Txn::new().when([guard]).and_then([TxnOp::put(key, value, None)]);
    match timeout(op, c.txn(txn)).await {
        Ok(Ok(r)) if r.succeeded() => Ok(()),
        Ok(Ok(_)) => Err("the leadership is gone: the write was fenced".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Reads the controller and the registered replicas for `/status`.
async fn refresh(
    client: &Client,
    keys: &Keys,
    view: &mut StoreView,
    to_driver: &tokio::sync::mpsc::UnboundedSender<FromStore>,
) {
    let mut c = client.clone();
    if let Ok(r) = c.get(keys.replicas.as_str(), Some(GetOptions::new().with_prefix())).await {
        view.replicas = r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).collect();
        view.replicas.sort();
    }
    if let Ok(r) = c.get(keys.forward.as_str(), Some(GetOptions::new().with_prefix())).await {
        view.forward = r
            .kvs()
            .iter()
            .filter_map(|kv| {
                let id = String::from_utf8_lossy(kv.key()).strip_prefix(&keys.forward)?.to_string();
                Some((id, String::from_utf8_lossy(kv.value()).into_owned()))
            })
            .collect();
    }
    match c.leader(keys.election.as_str()).await.ok().and_then(|r| r.kv().cloned()) {
        Some(kv) => {
            view.controller = Some(String::from_utf8_lossy(kv.value()).into_owned());
            view.epoch = Some(kv.create_revision() as u64);
        }
        None => (view.controller, view.epoch) = (None, None),
    }
    let _ = to_driver.send(FromStore::View(view.clone()));
}

/// How to connect: the connect timeout, etcd authentication, TLS (the CA, and the client's
/// identity when etcd checks clients).
fn options(cfg: &ClusterConfig, connect_timeout: Duration) -> ConnectOptions {
    let mut opts = ConnectOptions::new().with_connect_timeout(connect_timeout);
    if let Some((user, password)) = &cfg.auth {
        opts = opts.with_user(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key.expose()));
        }
        opts = opts.with_tls(t);
    }
    opts
}

/// For `flowgate check --connect`: connects, reads the controller and the registered replicas.
pub async fn probe(cfg: &ClusterConfig) -> Result<StoreView, String> {
    let opts = options(cfg, Duration::from_secs(3));
    let work = async {
        let mut client = Client::connect(&cfg.etcd, Some(opts)).await.map_err(|e| e.to_string())?;
        // A real call: the connection is made lazily.
        client
            .get(cfg.prefix.as_str(), Some(GetOptions::new().with_prefix().with_limit(1)))
            .await
            .map_err(|e| e.to_string())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut view = StoreView { connected: true, ..Default::default() };
        refresh(&client, &Keys::new(cfg), &mut view, &tx).await;
        rx.close();
        Ok(view)
    };
    timeout(Duration::from_secs(5), work).await.unwrap_or_else(|_| Err("no answer from etcd within 5s".into()))
}
