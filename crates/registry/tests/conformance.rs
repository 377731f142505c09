//! One behaviour, two backends: every test in `suite` runs against a real
//! ZooKeeper (started here on a free loopback port) and against the local
//! directory backend. Backend-specific behaviour (exact znode layout,
//! session expiry, outages, dead processes) follows.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{frontends, until};
use rpc_registry::local::LocalRegistry;
use rpc_registry::zk::{ZkReader, ZkRegistry};
use rpc_registry::{DrainMark, Endpoint, Registry, ServiceMap};
use rpc_testkit::ZkServer;

const SESSION: Duration = Duration::from_secs(2);

/// Opens registries of one backend, all on the same store.
trait Backend {
    async fn open(&self, product: &str) -> Arc<dyn Registry>;

    /// Puts (`on`) or removes the drain mark of `service_id` as an
    /// operator's tool does; whether that changed anything.
    async fn set_drained(&self, product: &str, service: &str, service_id: &str, on: bool) -> bool;
}

struct Zk(ZkServer);
impl Backend for Zk {
    async fn open(&self, product: &str) -> Arc<dyn Registry> {
        Arc::new(
            ZkRegistry::connect(&self.0.hosts(), product, SESSION)
                .await
                .unwrap(),
        )
    }

    async fn set_drained(&self, product: &str, service: &str, service_id: &str, on: bool) -> bool {
        let reader = ZkReader::connect(&self.0.hosts(), SESSION).await.unwrap();
        if on {
            let mark = DrainMark::new("by test");
            reader.drain(product, service, service_id, &mark).await
        } else {
            reader.undrain(product, service, service_id).await
        }
        .unwrap()
    }
}

struct Local(tempfile::TempDir);
impl Backend for Local {
    async fn open(&self, product: &str) -> Arc<dyn Registry> {
        Arc::new(LocalRegistry::open(self.0.path(), product).unwrap())
    }

    async fn set_drained(&self, product: &str, service: &str, service_id: &str, on: bool) -> bool {
        let dir = self.0.path();
        if on {
            rpc_registry::local::drain(
                dir,
                product,
                service,
                service_id,
                &DrainMark::new("by test"),
            )
        } else {
            rpc_registry::local::undrain(dir, product, service, service_id)
        }
        .unwrap()
    }
}

fn ep(service: &str, port: u16) -> Endpoint {
    let mut e = Endpoint::new(service, &format!("127.0.0.1:{port}"));
    e.code_url_version = "git@host:team/svc.git@1a2b3c4".into();
    e
}

/// The `draining` flag of each endpoint of `service`, in view order.
fn draining(m: &ServiceMap, service: &str) -> Vec<bool> {
    m.get(service)
        .map(|v| v.iter().map(|e| e.draining).collect())
        .unwrap_or_default()
}

mod suite {
    use super::*;

    pub async fn registered_endpoint_is_seen_with_its_record(b: impl Backend) {
        let reg = b.open("test").await;
        let watcher = b.open("test").await;
        let mut rx = watcher.watch().await.unwrap();
        assert!(rx.borrow().is_empty());
        let e = ep("echo", 7001);
        let _r = reg.register(e.clone()).await.unwrap();
        let m = until(&mut rx, "echo", |m| m.contains_key("echo")).await;
        assert_eq!(m["echo"], vec![e]);
    }

    pub async fn first_view_is_complete(b: impl Backend) {
        let reg = b.open("test").await;
        let _a = reg.register(ep("echo", 7001)).await.unwrap();
        let _b = reg.register(ep("echo", 7002)).await.unwrap();
        let _c = reg.register(ep("other", 7003)).await.unwrap();
        let m = b.open("test").await.watch().await.unwrap().borrow().clone();
        assert_eq!(
            frontends(&m, "echo"),
            ["127.0.0.1:7001", "127.0.0.1:7002"],
            "sorted by service_id"
        );
        assert_eq!(frontends(&m, "other"), ["127.0.0.1:7003"]);
    }

    pub async fn deregister_and_drop_remove_the_entry(b: impl Backend) {
        let reg = b.open("test").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let a = reg.register(ep("echo", 7001)).await.unwrap();
        let c = reg.register(ep("echo", 7002)).await.unwrap();
        until(&mut rx, "two", |m| frontends(m, "echo").len() == 2).await;
        a.deregister().await;
        until(&mut rx, "one left", |m| {
            frontends(m, "echo") == ["127.0.0.1:7002"]
        })
        .await;
        drop(c);
        until(&mut rx, "service gone", |m| !m.contains_key("echo")).await;
    }

    pub async fn products_are_isolated(b: impl Backend) {
        let test = b.open("test").await;
        let online = b.open("online_x").await;
        let _t = test.register(ep("echo", 7001)).await.unwrap();
        let _o = online.register(ep("echo", 7002)).await.unwrap();
        let mut rx = test.watch().await.unwrap();
        let m = until(&mut rx, "echo", |m| m.contains_key("echo")).await;
        assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7001"]);
        let mut rx = online.watch().await.unwrap();
        let m = until(&mut rx, "echo", |m| m.contains_key("echo")).await;
        assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7002"]);
    }

    /// A restarted service registers the same path again: the newer record
    /// wins, and the older registration's removal must not delete it.
    pub async fn newer_registration_replaces_a_stale_one(b: impl Backend) {
        let old = b.open("test").await;
        let new = b.open("test").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let r_old = old.register(ep("echo", 7001)).await.unwrap();
        let mut e = ep("echo", 7001);
        e.deploy_path = "/srv/echo-v2".into();
        let _r_new = new.register(e).await.unwrap();
        until(&mut rx, "new record", |m| {
            m.get("echo")
                .is_some_and(|v| v.len() == 1 && v[0].deploy_path == "/srv/echo-v2")
        })
        .await;
        r_old.deregister().await;
        // Deregistration is done when it returns; a fresh (complete) view
        // shows what it left.
        let m = b.open("test").await.watch().await.unwrap().borrow().clone();
        assert_eq!(m["echo"][0].deploy_path, "/srv/echo-v2");
    }

    /// Abandoning a registration leaves its entry where it is
    /// (deregistering would remove it).
    pub async fn an_abandoned_entry_stays(b: impl Backend) {
        let reg = b.open("test").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let r = reg.register(ep("echo", 7001)).await.unwrap();
        until(&mut rx, "registered", |m| m.contains_key("echo")).await;
        r.abandon().await;
        let m = b.open("test").await.watch().await.unwrap().borrow().clone();
        assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7001"]);
    }

    /// A process handing its endpoint to a successor: the successor
    /// registers the same path while the predecessor's entry is there, then
    /// the predecessor abandons its registration and goes. The successor's
    /// entry stays, and the endpoint is listed in every view meanwhile.
    pub async fn a_successor_takes_an_abandoned_entry_over(b: impl Backend) {
        let old = b.open("test").await;
        let new = b.open("test").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let r_old = old.register(ep("echo", 7001)).await.unwrap();
        until(&mut rx, "predecessor", |m| m.contains_key("echo")).await;
        // Every view published from here on.
        let mut views = rx.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    r = views.changed() => match r {
                        Ok(()) => seen.push(frontends(&views.borrow_and_update(), "echo")),
                        Err(_) => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            seen
        });

        let mut e = ep("echo", 7001);
        e.deploy_path = "/srv/echo-v2".into();
        let _r_new = new.register(e).await.unwrap();
        until(&mut rx, "successor's record", |m| {
            m.get("echo")
                .is_some_and(|v| v[0].deploy_path == "/srv/echo-v2")
        })
        .await;
        r_old.abandon().await;
        // ZooKeeper: the predecessor's session closes with its registry.
        drop(old);
        // Longer than a local registrant's check of its entry.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let m = b.open("test").await.watch().await.unwrap().borrow().clone();
        assert_eq!(m["echo"].len(), 1);
        assert_eq!(m["echo"][0].deploy_path, "/srv/echo-v2");
        let _ = stop.send(());
        let seen = seen.await.unwrap();
        assert!(!seen.is_empty(), "the successor's record was seen");
        assert!(seen.iter().all(|f| f == &["127.0.0.1:7001"]), "{seen:?}");
    }

    /// A drain mark reaches the watched view as `draining` on its
    /// endpoint (and only there), and leaves it when removed; setting or
    /// removing it twice changes nothing.
    pub async fn drain_marks_come_and_go_in_the_watched_view(b: impl Backend) {
        let reg = b.open("test").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let _a = reg.register(ep("echo", 7001)).await.unwrap();
        let _b = reg.register(ep("echo", 7002)).await.unwrap();
        let _o = reg.register(ep("other", 7002)).await.unwrap();
        until(&mut rx, "both", |m| draining(m, "echo") == [false, false]).await;

        assert!(b.set_drained("test", "echo", "127_0_0_1_7002", true).await);
        assert!(!b.set_drained("test", "echo", "127_0_0_1_7002", true).await);
        let m = until(&mut rx, "7002 draining", |m| {
            draining(m, "echo") == [false, true]
        })
        .await;
        assert_eq!(draining(&m, "other"), [false], "same id, other service");
        assert_eq!(frontends(&m, "echo").len(), 2, "still an endpoint");
        // A fresh (complete) view has it too.
        let m = b.open("test").await.watch().await.unwrap().borrow().clone();
        assert_eq!(draining(&m, "echo"), [false, true]);

        assert!(b.set_drained("test", "echo", "127_0_0_1_7002", false).await);
        assert!(!b.set_drained("test", "echo", "127_0_0_1_7002", false).await);
        until(&mut rx, "undrained", |m| {
            draining(m, "echo") == [false, false]
        })
        .await;
    }

    /// A mark names an endpoint, not a registration: set before the
    /// endpoint registers, it applies when it does; other products never
    /// see it.
    pub async fn drain_marks_outlive_registrations_and_stay_in_their_product(b: impl Backend) {
        let reg = b.open("test").await;
        let online = b.open("online_x").await;
        let mut rx = b.open("test").await.watch().await.unwrap();
        let mut online_rx = online.watch().await.unwrap();
        assert!(b.set_drained("test", "echo", "127_0_0_1_7001", true).await);
        let _o = online.register(ep("echo", 7001)).await.unwrap();
        let _a = reg.register(ep("echo", 7001)).await.unwrap();
        until(&mut rx, "registered drained", |m| {
            draining(m, "echo") == [true]
        })
        .await;
        until(&mut online_rx, "other product not drained", |m| {
            draining(m, "echo") == [false]
        })
        .await;
    }
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod zk {
            use super::*;
            $(#[tokio::test] async fn $name() { suite::$name(Zk(ZkServer::start())).await })*
        }
        mod local {
            use super::*;
            $(#[tokio::test] async fn $name() { suite::$name(Local(tempfile::tempdir().unwrap())).await })*
        }
    };
}

conformance!(
    registered_endpoint_is_seen_with_its_record,
    first_view_is_complete,
    deregister_and_drop_remove_the_entry,
    products_are_isolated,
    newer_registration_replaces_a_stale_one,
    an_abandoned_entry_stays,
    a_successor_takes_an_abandoned_entry_over,
    drain_marks_come_and_go_in_the_watched_view,
    drain_marks_outlive_registrations_and_stay_in_their_product
);

// === ZooKeeper only ===

#[tokio::test]
async fn zk_layout_and_json_follow_the_spec() {
    let zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "online_x", SESSION)
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 5555)).await.unwrap();
    let client = reg.client();
    let (data, stat) = client
        .get_data("/zk/product/online_x/services/echo/127_0_0_1_5555")
        .await
        .unwrap();
    assert_ne!(stat.ephemeral_owner, 0, "endpoint nodes are ephemeral");
    let (_, parent) = client
        .get_data("/zk/product/online_x/services/echo")
        .await
        .unwrap();
    assert_eq!(parent.ephemeral_owner, 0, "parents are persistent");
    let json: serde_json::Value = serde_json::from_slice(&data).unwrap();
    for key in [
        "service",
        "service_id",
        "frontend",
        "deploy_path",
        "code_url_version",
        "hostname",
        "start_time",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["service_id"], "127_0_0_1_5555");
    assert_eq!(json["frontend"], "127.0.0.1:5555");
}

#[tokio::test]
async fn zk_records_from_other_writers_are_read_leniently() {
    use zookeeper_client::{Acls, CreateMode};
    let zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let client = reg.client();
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client
        .mkdir("/zk/product/test/services/echo", &opts)
        .await
        .unwrap();
    // Extra fields and missing optional ones: accepted. Garbage: skipped.
    let good =
        br#"{"service":"echo","service_id":"127_0_0_1_1","frontend":"127.0.0.1:1","weight":3}"#;
    client
        .create("/zk/product/test/services/echo/127_0_0_1_1", good, &opts)
        .await
        .unwrap();
    client
        .create("/zk/product/test/services/echo/bad", b"not json", &opts)
        .await
        .unwrap();
    let mut rx = reg.watch().await.unwrap();
    let m = until(&mut rx, "echo", |m| m.contains_key("echo")).await;
    assert_eq!(frontends(&m, "echo"), ["127.0.0.1:1"]);
}

/// The operator's one-off read: every product, one product's services
/// (a service node left without endpoints included), and nothing created
/// for a product that does not exist.
#[tokio::test]
async fn zk_reader_lists_products_and_services_without_creating_any() {
    use rpc_registry::zk::ZkReader;
    let zk = ZkServer::start();
    let reader = ZkReader::connect(&zk.hosts(), SESSION).await.unwrap();
    assert!(reader.products().await.unwrap().is_empty());

    let test = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let online = ZkRegistry::connect(&zk.hosts(), "online_x", SESSION)
        .await
        .unwrap();
    let first = ep("echo", 7001);
    let _b = test.register(ep("echo", 7002)).await.unwrap();
    let _a = test.register(first.clone()).await.unwrap();
    let gone = test.register(ep("gone", 7003)).await.unwrap();
    gone.deregister().await;
    let _o = online.register(ep("other", 7004)).await.unwrap();

    assert_eq!(reader.products().await.unwrap(), ["online_x", "test"]);
    let m = reader.services("test").await.unwrap();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["echo", "gone"]);
    assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(m["echo"][0], first, "the whole record");
    assert!(m["gone"].is_empty());
    assert!(reader.services("nope").await.unwrap().is_empty());
    assert_eq!(reader.products().await.unwrap(), ["online_x", "test"]);
}

/// Drain marks live beside the services subtree, never in it: readers
/// written against the original see the same endpoints as before.
#[tokio::test]
async fn zk_drain_marks_live_outside_the_services_subtree() {
    let zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 5555)).await.unwrap();
    let reader = ZkReader::connect(&zk.hosts(), SESSION).await.unwrap();
    let mark = DrainMark::new("127.0.0.1:5555");
    assert!(reader
        .drain("test", "echo", "127_0_0_1_5555", &mark)
        .await
        .unwrap());
    // A mark for an endpoint that is not registered is accepted too.
    assert!(reader
        .drain("test", "echo", "127_0_0_1_9999", &mark)
        .await
        .unwrap());

    let client = reg.client();
    let services = client
        .list_children("/zk/product/test/services")
        .await
        .unwrap();
    assert_eq!(services, ["echo"]);
    let ids = client
        .list_children("/zk/product/test/services/echo")
        .await
        .unwrap();
    assert_eq!(ids, ["127_0_0_1_5555"], "only endpoints under the service");
    let (data, stat) = client
        .get_data("/zk/product/test/drain/echo/127_0_0_1_5555")
        .await
        .unwrap();
    assert_eq!(stat.ephemeral_owner, 0, "marks are persistent");
    let read: DrainMark = serde_json::from_slice(&data).unwrap();
    assert_eq!(read, mark);

    let m = reader.services("test").await.unwrap();
    assert_eq!(draining(&m, "echo"), [true]);
    let drains = reader.drains("test").await.unwrap();
    assert_eq!(
        drains["echo"].iter().collect::<Vec<_>>(),
        ["127_0_0_1_5555", "127_0_0_1_9999"]
    );
    // Names that are not one path component are refused.
    assert!(reader.drain("test", "echo", "../x", &mark).await.is_err());
    assert!(reader.undrain("test", "a/b", "x").await.is_err());
}

/// A loopback TCP relay that can cut every connection through it, to
/// partition a client from a running ZooKeeper.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Relay { port, cut }
    }

    fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Replacing another session's node is one transaction: a reader polling
/// the service's children as fast as it can never finds it missing.
#[tokio::test]
async fn zk_a_replaced_node_is_never_missing() {
    let zk = ZkServer::start();
    let regs = [
        ZkRegistry::connect(&zk.hosts(), "test", SESSION)
            .await
            .unwrap(),
        ZkRegistry::connect(&zk.hosts(), "test", SESSION)
            .await
            .unwrap(),
    ];
    let mut held = vec![regs[0].register(ep("echo", 7001)).await.unwrap()];
    let reader = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap()
        .client();
    let polling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poll = {
        let polling = polling.clone();
        tokio::spawn(async move {
            let (mut reads, mut missing) = (0u32, 0u32);
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                let ids = reader
                    .list_children("/zk/product/test/services/echo")
                    .await
                    .unwrap();
                reads += 1;
                missing += u32::from(ids.is_empty());
            }
            (reads, missing)
        })
    };
    // Each registry in turn takes the node over from the other's session.
    for i in 1..=20 {
        held.push(regs[i % 2].register(ep("echo", 7001)).await.unwrap());
    }
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (reads, missing) = poll.await.unwrap();
    assert!(reads >= 10, "the reader kept up ({reads} reads)");
    assert_eq!(missing, 0, "missing in {missing} of {reads} reads");
    for r in held {
        r.abandon().await;
    }
}

/// An abandoned entry is still an ephemeral node of its registry's
/// session: it goes when that session closes.
#[tokio::test]
async fn zk_an_abandoned_entry_goes_with_its_session() {
    let zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let watcher = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = watcher.watch().await.unwrap();
    let r = reg.register(ep("echo", 7001)).await.unwrap();
    until(&mut rx, "registered", |m| m.contains_key("echo")).await;
    r.abandon().await;
    drop(reg);
    until(&mut rx, "gone with the session", |m| {
        !m.contains_key("echo")
    })
    .await;
}

/// A registrant cut off from a live ZooKeeper for longer than its session
/// finds the session expired when it gets back, and registers again.
#[tokio::test]
async fn zk_registrant_registers_again_after_its_session_expires() {
    let zk = ZkServer::start();
    let relay = Relay::start(zk.port()).await;
    let reg = ZkRegistry::connect(&relay.hosts(), "test", SESSION)
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 7001)).await.unwrap();
    let first = reg.session_id();
    let watcher = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = watcher.watch().await.unwrap();
    until(&mut rx, "registered", |m| m.contains_key("echo")).await;

    relay.set_cut(true);
    until(&mut rx, "node gone with the expired session", |m| {
        !m.contains_key("echo")
    })
    .await;
    relay.set_cut(false);
    until(&mut rx, "registered again", |m| m.contains_key("echo")).await;
    assert_ne!(reg.session_id(), first, "under a new session");
}

/// With credentials, the new session after an expiry authenticates too:
/// the registrant may register again under the service node its identity
/// owns, and the new node is as protected as the first.
#[tokio::test]
async fn zk_registrant_with_credentials_registers_again_after_its_session_expires() {
    let zk = ZkServer::start();
    let relay = Relay::start(zk.port()).await;
    let auth = rpc_config::ZkAuth::parse("digest:echo:echo-pw").unwrap();
    let reg = ZkRegistry::connect_as(&relay.hosts(), "test", SESSION, Some(&auth))
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 7001)).await.unwrap();
    let first = reg.session_id();
    let watcher = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = watcher.watch().await.unwrap();
    until(&mut rx, "registered", |m| m.contains_key("echo")).await;

    relay.set_cut(true);
    until(&mut rx, "node gone with the expired session", |m| {
        !m.contains_key("echo")
    })
    .await;
    relay.set_cut(false);
    until(&mut rx, "registered again", |m| m.contains_key("echo")).await;
    assert_ne!(reg.session_id(), first, "under a new session");
    let node = "/zk/product/test/services/echo/127_0_0_1_7001";
    assert_eq!(
        watcher.client().delete(node, None).await,
        Err(zookeeper_client::Error::NoAuth)
    );
}

#[tokio::test]
async fn zk_outage_keeps_the_last_view_and_recovers() {
    let mut zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 7001)).await.unwrap();
    let watcher = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = watcher.watch().await.unwrap();
    until(&mut rx, "registered", |m| m.contains_key("echo")).await;

    zk.stop();
    // Longer than the session: both sessions expire meanwhile.
    tokio::time::sleep(SESSION * 2).await;
    assert_eq!(
        frontends(&rx.borrow(), "echo"),
        ["127.0.0.1:7001"],
        "an outage never empties the view"
    );
    zk.restart();
    let _r2 = reg.register(ep("echo", 7002)).await.unwrap();
    let m = until(&mut rx, "both after recovery", |m| {
        frontends(m, "echo").len() == 2
    })
    .await;
    assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7001", "127.0.0.1:7002"]);
}

// === Local directory only ===

#[tokio::test]
async fn local_entries_of_dead_processes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mut record = serde_json::to_value(ep("echo", 7001)).unwrap();
    record["pid"] = child.id().into();
    let path = reg.base().join("echo/127_0_0_1_7001.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();

    let mut rx = reg.watch().await.unwrap();
    until(&mut rx, "live owner's entry", |m| m.contains_key("echo")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    until(&mut rx, "dead owner's entry gone", |m| {
        !m.contains_key("echo")
    })
    .await;
    assert!(!path.exists(), "the stale file is cleaned up");
}

#[tokio::test]
async fn local_registration_comes_back_if_its_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let _r = reg.register(ep("echo", 7001)).await.unwrap();
    let path = reg.base().join("echo/127_0_0_1_7001.json");
    assert!(path.exists());
    std::fs::remove_file(&path).unwrap();
    let mut rx = reg.watch().await.unwrap();
    until(&mut rx, "re-registered", |m| m.contains_key("echo")).await;
}

/// Marks are files beside the services directory; any file there counts
/// (its content is for people), so `touch` drains an endpoint too.
#[tokio::test]
async fn local_drain_marks_are_files_beside_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::open(dir.path(), "test").unwrap();
    let _a = reg.register(ep("echo", 7001)).await.unwrap();
    let _b = reg.register(ep("echo", 7002)).await.unwrap();
    let mut rx = reg.watch().await.unwrap();
    let mark = DrainMark::new("127.0.0.1:7001");
    assert!(
        rpc_registry::local::drain(dir.path(), "test", "echo", "127_0_0_1_7001", &mark).unwrap()
    );
    let file = dir.path().join("test/drain/echo/127_0_0_1_7001.json");
    let read: DrainMark = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(read, mark);
    let mut files: Vec<_> = std::fs::read_dir(reg.base().join("echo"))
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["127_0_0_1_7001.json", "127_0_0_1_7002.json"]);
    until(&mut rx, "7001 draining", |m| {
        draining(m, "echo") == [true, false]
    })
    .await;

    std::fs::write(dir.path().join("test/drain/echo/127_0_0_1_7002.json"), "").unwrap();
    until(&mut rx, "both draining", |m| {
        draining(m, "echo") == [true, true]
    })
    .await;
    let m = rpc_registry::local::read_product(dir.path(), "test").unwrap();
    assert_eq!(draining(&m, "echo"), [true, true], "one-off reads too");
    assert!(rpc_registry::local::undrain(dir.path(), "test", "echo", "127_0_0_1_7002").unwrap());
    assert!(!file.with_file_name("127_0_0_1_7002.json").exists());
    until(&mut rx, "7002 undrained", |m| {
        draining(m, "echo") == [true, false]
    })
    .await;
    assert!(rpc_registry::local::drain(dir.path(), "test", "..", "x", &mark).is_err());
}
