//! A service on the SDK with `zk_auth`: its registration in a real
//! ZooKeeper is readable by all and cannot be deleted or overwritten
//! without its credentials.

mod common;

use common::*;
use rpc_registry::zk::zookeeper_client::{Client, Error as ZkError};
use rpc_sdk::Service;
use rpc_testkit::ZkServer;

#[tokio::test]
async fn a_service_with_credentials_owns_its_registration() {
    let zk = ZkServer::start();
    let config = service_config(&format!(
        "service=echo\nquiet_period=0\nzk={}\nzk_auth=digest:echo:echo-secret",
        zk.hosts()
    ));
    let svc = Service::new(config, test_handler(Default::default()))
        .start()
        .await
        .expect("service starts");
    let id = rpc_registry::service_id(&svc.addresses()[0].to_string());
    let node = format!("/zk/product/test/services/echo/{id}");

    let anon = Client::connect(&zk.hosts()).await.unwrap();
    let (data, _) = anon.get_data(&node).await.expect("readable by all");
    let record = String::from_utf8(data).unwrap();
    let frontend = format!("\"frontend\":\"{}\"", svc.addresses()[0]);
    assert!(record.contains(&frontend), "{record}");
    assert_eq!(anon.delete(&node, None).await, Err(ZkError::NoAuth));
    assert_eq!(
        anon.set_data(&node, b"{}", None).await.err(),
        Some(ZkError::NoAuth)
    );

    // Its own graceful stop still removes it.
    svc.stop().await;
    assert_eq!(anon.check_stat(&node).await.unwrap(), None);
}
