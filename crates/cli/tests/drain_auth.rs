//! `rpcctl drain`/`undrain` with ZooKeeper credentials (`--zk-auth-file`):
//! a mark written with them is that identity's; without them it can be
//! read but not removed, and the error says why. A credentials file others
//! may read is refused before anything connects.

#[allow(dead_code)] // the helpers other tests use
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{endpoint, rpcctl};
use rpc_config::ZkAuth;
use rpc_registry::zk::ZkRegistry;
use rpc_registry::Registry;
use rpc_testkit::ZkServer;

const SESSION: Duration = Duration::from_secs(5);

#[tokio::test]
async fn drain_marks_written_with_credentials_need_them_to_be_removed() {
    let zk = ZkServer::start();
    let hosts = zk.hosts();
    let service_auth = ZkAuth::parse("digest:echo:echo-pw").unwrap();
    let reg = ZkRegistry::connect_as(&hosts, "test", SESSION, Some(&service_auth))
        .await
        .unwrap();
    let _r = reg
        .register(endpoint("echo", "127.0.0.1:5555"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ops.auth");
    std::fs::write(&file, "digest:ops:ops-secret\n").unwrap();
    let file = file.to_str().unwrap();
    let drain = [
        "--zk",
        &hosts,
        "--zk-auth-file",
        file,
        "drain",
        "echo",
        "127.0.0.1:5555",
    ];

    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = rpcctl(&drain).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stderr.contains("zk_auth_file") && run.stderr.contains("chmod 600"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("ops-secret"), "{}", run.stderr);

    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = rpcctl(&drain).await;
    assert!(run.ok, "{}", run.stderr);

    // Without credentials: listed as drained, not undrained.
    let run = rpcctl(&["--zk", &hosts, "list", "--json"]).await;
    assert!(run.ok, "{}", run.stderr);
    let ep = &run.json()["products"][0]["services"][0]["endpoints"][0];
    assert_eq!(ep["draining"], true, "{}", run.stdout);
    let run = rpcctl(&["--zk", &hosts, "undrain", "echo", "127.0.0.1:5555"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.stderr.contains("not allowed") && run.stderr.contains("zk_auth"),
        "{}",
        run.stderr
    );

    let undrain = [
        "--zk",
        &hosts,
        "--zk-auth-file",
        file,
        "undrain",
        "echo",
        "127.0.0.1:5555",
    ];
    let run = rpcctl(&undrain).await;
    assert!(run.ok, "{}", run.stderr);
}
