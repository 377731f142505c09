//! The proxy over a ZooKeeper whose nodes carry ACLs (`zk_auth`), and
//! product isolation against a manipulated registry: a real proxy, real
//! endpoints, a real ZooKeeper.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;
use rpc_config::ZkAuth;
use rpc_registry::zk::zookeeper_client::{Acls, CreateMode};
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::ZkServer;

const SESSION: Duration = Duration::from_secs(4);

/// Calls `service:tag` until `tag` answers, or fails after STEP.
async fn wait_for_tag(c: &mut Client, service: &str, tag: &[u8]) {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut seqid = 0;
    loop {
        seqid += 1;
        let r = c.call(&format!("{service}:tag"), seqid, b"").await;
        if r.kind() == MessageType::Reply && r.body() == tag {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} never reached {tag:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service registered with credentials; a proxy configured without any
/// (opened as the binary opens it) routes to it, and its status page names
/// its own identity, when it has one, without the password.
#[tokio::test]
async fn a_proxy_without_credentials_routes_to_a_registration_made_with_them() {
    let zk = ZkServer::start();
    let a = TestEndpoint::start("a").await;
    let auth = ZkAuth::parse("digest:echo-team:echo-secret").unwrap();
    let registrant = ZkRegistry::connect_as(&zk.hosts(), "test", SESSION, Some(&auth))
        .await
        .unwrap();
    let _r = registrant.register(a.endpoint("echo")).await.unwrap();

    let config = test_config(&format!("zk={}\nproduct=test", zk.hosts()));
    let (_proxy, addr) = start_proxy(&config, rpc_registry::open(&config).await.unwrap()).await;
    let mut c = Client::connect(&addr).await;
    wait_for_tag(&mut c, "echo", b"a").await;

    // A proxy with credentials of its own reads it too.
    let config = test_config(&format!(
        "zk={}\nproduct=test\nzk_auth=digest:proxy:proxy-secret\nmetrics_address=127.0.0.1:0",
        zk.hosts()
    ));
    let (proxy, addr) = start_proxy(&config, rpc_registry::open(&config).await.unwrap()).await;
    let mut c = Client::connect(&addr).await;
    wait_for_tag(&mut c, "echo", b"a").await;
    let status = rpc_testkit::http_get(proxy.metrics_address().unwrap(), "/status").await;
    assert!(status.contains("digest:proxy"), "{status}");
    assert!(!status.contains("proxy-secret"), "{status}");
}

/// A proxy of product `test` never routes to an `online…` endpoint whose
/// node was copied into the test subtree: not beside a test endpoint of
/// the same service, not as the only endpoint of a service.
#[tokio::test]
async fn a_test_proxy_never_routes_to_an_online_endpoint_copied_into_its_product() {
    let zk = ZkServer::start();
    let online = TestEndpoint::start("online").await;
    let t = TestEndpoint::start("t").await;
    let online_reg = ZkRegistry::connect(&zk.hosts(), "online_x", SESSION)
        .await
        .unwrap();
    let _o1 = online_reg.register(online.endpoint("echo")).await.unwrap();
    let _o2 = online_reg.register(online.endpoint("pay")).await.unwrap();

    // Someone copies the online nodes into the test product.
    let client = online_reg.client();
    let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let id = &online.endpoint("echo").service_id;
    for service in ["echo", "pay"] {
        let from = format!("/zk/product/online_x/services/{service}/{id}");
        let (data, _) = client.get_data(&from).await.unwrap();
        let to = format!("/zk/product/test/services/{service}");
        client.mkdir(&to, &opts).await.unwrap();
        client
            .create(&format!("{to}/{id}"), &data, &opts)
            .await
            .unwrap();
    }

    let config = test_config(&format!("zk={}\nproduct=test", zk.hosts()));
    let (_proxy, addr) = start_proxy(&config, rpc_registry::open(&config).await.unwrap()).await;
    // Registered after the copies: once the proxy routes to it, its view
    // holds them too.
    let test_reg = ZkRegistry::connect(&zk.hosts(), "test", SESSION)
        .await
        .unwrap();
    let _t = test_reg.register(t.endpoint("echo")).await.unwrap();
    let mut c = Client::connect(&addr).await;
    wait_for_tag(&mut c, "echo", b"t").await;

    for seqid in 0..50 {
        let r = c.call("echo:tag", 1000 + seqid, b"").await;
        assert_eq!((r.kind(), r.body()), (MessageType::Reply, &b"t"[..]));
    }
    let r = c.call("pay:tag", 2000, b"").await;
    assert_eq!(r.kind(), MessageType::Exception, "pay has no test endpoint");
    assert_eq!(
        online.calls.load(Ordering::SeqCst),
        0,
        "nothing reached online"
    );

    // The online product's own proxy routes to both.
    let config = test_config(&format!("zk={}\nproduct=online_x", zk.hosts()));
    let (_p, addr) = start_proxy(&config, rpc_registry::open(&config).await.unwrap()).await;
    let mut c = Client::connect(&addr).await;
    wait_for_tag(&mut c, "pay", b"online").await;
}
