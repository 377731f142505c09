//! ZooKeeper credentials and ACLs (`zk_auth`), and product isolation
//! beyond the path, against a real ZooKeeper; the embedded backend's
//! isolation against links and copied files.

mod common;

use std::time::Duration;

use common::{frontends, until};
use rpc_config::ZkAuth;
use rpc_registry::local::LocalRegistry;
use rpc_registry::zk::{ZkReader, ZkRegistry};
use rpc_registry::{DrainMark, Endpoint, Registry};
use rpc_testkit::ZkServer;
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, Permission};

const SESSION: Duration = Duration::from_secs(2);

fn ep(service: &str, port: u16) -> Endpoint {
    Endpoint::new(service, &format!("127.0.0.1:{port}"))
}

fn auth(user: &str) -> ZkAuth {
    ZkAuth::parse(&format!("digest:{user}:{user}-pw")).unwrap()
}

/// A raw client, authenticated as `user` if given.
async fn raw(zk: &ZkServer, user: Option<&str>) -> Client {
    let mut c = Client::connector().with_session_timeout(SESSION);
    if let Some(user) = user {
        let a = auth(user);
        c = c.with_auth("digest", a.credentials());
    }
    c.connect(&zk.hosts()).await.unwrap()
}

const ECHO: &str = "/zk/product/test/services/echo";
const NODE: &str = "/zk/product/test/services/echo/127_0_0_1_5555";

/// A registration made with credentials: everyone reads it, a proxy
/// without credentials sees it, and neither a client without credentials
/// nor one with another identity can delete, rewrite or re-permission it.
#[tokio::test]
async fn a_registration_with_credentials_is_read_by_all_and_changed_by_its_identity_only() {
    let zk = ZkServer::start();
    let alice = auth("alice");
    let reg = ZkRegistry::connect_as(&zk.hosts(), "test", SESSION, Some(&alice))
        .await
        .unwrap();
    let r = reg.register(ep("echo", 5555)).await.unwrap();

    // The ACLs the module documents.
    let anon = raw(&zk, None).await;
    let (acls, _) = anon.get_acl(NODE).await.unwrap();
    let shown: Vec<_> = acls
        .iter()
        .map(|a| {
            format!(
                "{}:{}:{}",
                a.scheme(),
                a.id().split(':').next().unwrap(),
                a.permission()
            )
        })
        .collect();
    assert_eq!(shown, ["digest:alice:ALL", "world:anyone:READ"]);
    let (acls, _) = anon.get_acl(ECHO).await.unwrap();
    assert_eq!(acls.len(), 2, "the service node is alice's too: {acls:?}");
    for shared in [
        "/zk",
        "/zk/product",
        "/zk/product/test",
        "/zk/product/test/services",
    ] {
        let (acls, _) = anon.get_acl(shared).await.unwrap();
        assert_eq!(acls.len(), 1, "{shared}: {acls:?}");
        assert_eq!(acls[0].scheme(), "world", "{shared}");
        assert_eq!(
            acls[0].permission(),
            Permission::READ | Permission::CREATE,
            "{shared}"
        );
    }

    // Without credentials: read, but not delete or overwrite.
    let (data, _) = anon.get_data(NODE).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(json["frontend"], "127.0.0.1:5555");
    assert_eq!(anon.delete(NODE, None).await, Err(ZkError::NoAuth));
    assert_eq!(
        anon.set_data(NODE, b"{}", None).await.err(),
        Some(ZkError::NoAuth)
    );
    assert_eq!(
        anon.set_acl(NODE, &Acls::anyone_all(), None).await.err(),
        Some(ZkError::NoAuth)
    );
    // Nor remove or take over the service's node or the shared parents.
    assert_eq!(
        anon.create(
            &format!("{ECHO}/rogue"),
            b"{}",
            &CreateMode::Ephemeral.with_acls(Acls::anyone_all())
        )
        .await
        .err(),
        Some(ZkError::NoAuth),
        "nobody else adds endpoints to alice's service"
    );
    assert_eq!(anon.delete(ECHO, None).await, Err(ZkError::NoAuth));
    assert_eq!(
        anon.set_acl("/zk/product/test/services", &Acls::anyone_all(), None)
            .await
            .err(),
        Some(ZkError::NoAuth)
    );

    // Another identity cannot either.
    let bob = raw(&zk, Some("bob")).await;
    assert_eq!(bob.delete(NODE, None).await, Err(ZkError::NoAuth));
    assert_eq!(
        bob.set_data(NODE, b"{}", None).await.err(),
        Some(ZkError::NoAuth)
    );

    // A reader without credentials (a proxy's) routes to it.
    let proxy_view = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = proxy_view.watch().await.unwrap();
    until(&mut rx, "alice's endpoint", |m| {
        frontends(m, "echo") == ["127.0.0.1:5555"]
    })
    .await;

    // The owner removes its own node.
    r.deregister().await;
    assert_eq!(anon.check_stat(NODE).await.unwrap(), None);
    until(&mut rx, "deregistered", |m| !m.contains_key("echo")).await;
}

/// Two services with different identities share a product: each owns its
/// own service, neither can delete the other's endpoints, and a third
/// registrant of a service that belongs to another identity is refused at
/// once with a clear error.
#[tokio::test]
async fn two_identities_share_a_product_and_cannot_touch_each_others_nodes() {
    let zk = ZkServer::start();
    let (alice, bob) = (auth("alice"), auth("bob"));
    let a = ZkRegistry::connect_as(&zk.hosts(), "test", SESSION, Some(&alice))
        .await
        .unwrap();
    let b = ZkRegistry::connect_as(&zk.hosts(), "test", SESSION, Some(&bob))
        .await
        .unwrap();
    let _ra = a.register(ep("echo", 5555)).await.unwrap();
    let _rb = b.register(ep("pay", 6666)).await.unwrap();
    let pay = "/zk/product/test/services/pay/127_0_0_1_6666";

    assert_eq!(a.client().delete(pay, None).await, Err(ZkError::NoAuth));
    assert_eq!(b.client().delete(NODE, None).await, Err(ZkError::NoAuth));
    assert_eq!(
        a.client().set_data(pay, b"{}", None).await.err(),
        Some(ZkError::NoAuth)
    );

    // Bob registering into alice's service: refused, promptly.
    let started = tokio::time::Instant::now();
    let err = b.register(ep("echo", 5556)).await.err().expect("refused");
    assert!(started.elapsed() < SESSION, "{:?}", started.elapsed());
    assert!(
        err.to_string().contains("another ZooKeeper identity"),
        "{err}"
    );
    // Alice, from another process (same identity), may.
    let a2 = ZkRegistry::connect_as(&zk.hosts(), "test", SESSION, Some(&alice))
        .await
        .unwrap();
    let _ra2 = a2.register(ep("echo", 5557)).await.unwrap();

    let reader = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let mut rx = reader.watch().await.unwrap();
    let m = until(&mut rx, "both services", |m| {
        m.len() == 2 && m["echo"].len() == 2
    })
    .await;
    assert_eq!(frontends(&m, "pay"), ["127.0.0.1:6666"]);
}

/// Drain marks written with credentials are the identity's: a tool
/// without them cannot remove them, and is told why.
#[tokio::test]
async fn drain_marks_written_with_credentials_are_removed_by_that_identity_only() {
    let zk = ZkServer::start();
    let ops = auth("ops");
    let reader = ZkReader::connect_as(&zk.hosts(), SESSION, Some(&ops))
        .await
        .unwrap();
    let mark = DrainMark::new("127.0.0.1:5555");
    assert!(reader
        .drain("test", "echo", "127_0_0_1_5555", &mark)
        .await
        .unwrap());

    let anon = ZkReader::connect(&zk.hosts(), SESSION).await.unwrap();
    assert!(anon.drains("test").await.unwrap()["echo"].contains("127_0_0_1_5555"));
    let err = anon
        .undrain("test", "echo", "127_0_0_1_5555")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not allowed") && err.contains("zk_auth"),
        "{err}"
    );
    let err = anon
        .drain("test", "echo", "127_0_0_1_6666", &mark)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not allowed"), "{err}");

    assert!(reader
        .undrain("test", "echo", "127_0_0_1_5555")
        .await
        .unwrap());
    assert!(anon.drains("test").await.unwrap().is_empty());
}

/// Without credentials nothing changes: nodes open to all, as the
/// original created them.
#[tokio::test]
async fn without_credentials_nodes_stay_open_to_all() {
    let zk = ZkServer::start();
    let reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let _r = reg.register(ep("echo", 5555)).await.unwrap();
    let anon = raw(&zk, None).await;
    for path in [NODE, ECHO, "/zk/product/test/services"] {
        let (acls, _) = anon.get_acl(path).await.unwrap();
        assert_eq!(acls, *Acls::anyone_all(), "{path}");
    }
}

/// A proxy of `test` never sees an `online…` endpoint whose node was
/// copied into its subtree: the record names its product.
#[tokio::test]
async fn an_endpoint_copied_from_another_product_is_not_read() {
    let zk = ZkServer::start();
    let online = ZkRegistry::connect(&zk.hosts(), "online_x", SESSION)
        .await
        .unwrap();
    let _o = online.register(ep("echo", 7001)).await.unwrap();
    let client = raw(&zk, None).await;
    let (copied, _) = client
        .get_data("/zk/product/online_x/services/echo/127_0_0_1_7001")
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&copied).unwrap();
    assert_eq!(json["product"], "online_x", "records name their product");

    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.mkdir(ECHO, &opts).await.unwrap();
    client
        .create(&format!("{ECHO}/127_0_0_1_7001"), &copied, &opts)
        .await
        .unwrap();
    // A record naming this product, and one naming none (another SDK's),
    // are read.
    let own = br#"{"service":"echo","service_id":"127_0_0_1_7002","frontend":"127.0.0.1:7002","product":"test"}"#;
    client
        .create(&format!("{ECHO}/127_0_0_1_7002"), own, &opts)
        .await
        .unwrap();
    let plain = br#"{"service":"echo","service_id":"127_0_0_1_7003","frontend":"127.0.0.1:7003"}"#;
    client
        .create(&format!("{ECHO}/127_0_0_1_7003"), plain, &opts)
        .await
        .unwrap();

    let test = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let rx = test.watch().await.unwrap();
    assert_eq!(
        frontends(&rx.borrow(), "echo"),
        ["127.0.0.1:7002", "127.0.0.1:7003"]
    );
    let reader = ZkReader::connect(&zk.hosts(), SESSION).await.unwrap();
    assert_eq!(
        frontends(&reader.services("test").await.unwrap(), "echo"),
        ["127.0.0.1:7002", "127.0.0.1:7003"]
    );
    assert_eq!(
        frontends(&reader.services("online_x").await.unwrap(), "echo"),
        ["127.0.0.1:7001"]
    );
}

/// The embedded backend: a file copied from another product, a linked
/// file, a linked service directory and a linked product are not read as
/// this product's.
#[tokio::test]
async fn local_copies_and_links_into_another_product_are_not_read() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let online = LocalRegistry::open(d, "online_x").unwrap();
    let _o = online.register(ep("echo", 7001)).await.unwrap();
    let _p = online.register(ep("pay", 7005)).await.unwrap();
    let test = LocalRegistry::open(d, "test").unwrap();
    let _t = test.register(ep("echo", 7002)).await.unwrap();

    let from = d.join("online_x/services/echo/127_0_0_1_7001.json");
    std::fs::copy(&from, d.join("test/services/echo/127_0_0_1_7001.json")).unwrap();
    symlink(&from, d.join("test/services/echo/127_0_0_1_7009.json")).unwrap();
    symlink(d.join("online_x/services/pay"), d.join("test/services/pay")).unwrap();

    let rx = test.watch().await.unwrap();
    let m = rx.borrow().clone();
    assert_eq!(m.keys().collect::<Vec<_>>(), ["echo"]);
    assert_eq!(frontends(&m, "echo"), ["127.0.0.1:7002"]);
    let once = rpc_registry::local::read_product(d, "test").unwrap();
    assert_eq!(frontends(&once, "echo"), ["127.0.0.1:7002"]);

    // A product that is a link to another: refused, and not listed.
    symlink(d.join("online_x"), d.join("test2")).unwrap();
    let err = LocalRegistry::open(d, "test2").err().expect("refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(rpc_registry::local::read_product(d, "test2").is_err());
    assert_eq!(
        rpc_registry::local::products(d).unwrap(),
        ["online_x", "test"]
    );
}
