//! The whole path: client → rpc-proxy → rpc-lb → workers, every hop a real
//! socket, the LB found by the proxy through the registry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::MessageType;

async fn proxy(reg: &MemRegistry) -> rpc_proxy::ProxyHandle {
    let mut config = rpc_config::Config::parse("").unwrap();
    config.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    rpc_proxy::start(&config, Arc::new(reg.clone()))
        .await
        .expect("proxy starts")
}

#[tokio::test]
async fn pipelined_clients_through_proxy_and_lb_all_get_their_replies() {
    let (lb, reg) = start_lb("worker_pool_size=4").await;
    let w = workers(&lb, &["a", "b", "c"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let proxy = proxy(&reg).await;
    let addr = proxy.addresses()[0].clone();

    let mut clients = Vec::new();
    for c in 0..4 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await;
            for i in 0..50 {
                let body = format!("{c}-{i}");
                client
                    .send(MessageType::Call, "echo:echo", i, body.as_bytes())
                    .await;
            }
            // The proxy answers a connection in request order (SPEC §3).
            for i in 0..50 {
                let r = client.recv().await.expect("reply");
                assert_eq!(r.kind(), MessageType::Reply);
                assert_eq!((r.name(), r.seqid()), (&b"echo"[..], i));
                assert_eq!(r.body(), format!("{c}-{i}").as_bytes());
            }
        }));
    }
    for c in clients {
        tokio::time::timeout(STEP, c).await.unwrap().unwrap();
    }
    assert_eq!(w.iter().map(TestWorker::calls).sum::<usize>(), 200);
    for w in &w {
        assert!(
            w.state
                .max_inflight
                .load(std::sync::atomic::Ordering::SeqCst)
                <= 4
        );
    }
    proxy.shutdown().await;
    lb.stop().await;
}

#[tokio::test]
async fn slow_calls_do_not_hold_up_fast_ones_through_the_proxy() {
    let (lb, reg) = start_lb("worker_pool_size=1").await;
    let w = workers(&lb, &["a", "b", "c", "d"], 1).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let proxy = proxy(&reg).await;
    let addr = proxy.addresses()[0].clone();

    // Two workers stuck on calls from one client ...
    let mut slow = Client::connect(&addr).await;
    slow.send(MessageType::Call, "echo:block", 1, b"s1").await;
    slow.send(MessageType::Call, "echo:block", 2, b"s2").await;
    eventually("two workers busy", || {
        w.iter().filter(|w| w.inflight() == 1).count() == 2
    })
    .await;
    // ... while another client's fast calls keep flowing through the rest.
    let mut fast = Client::connect(&addr).await;
    for i in 0..50 {
        let r = tokio::time::timeout(Duration::from_secs(1), fast.call("echo:echo", i, b"f"))
            .await
            .expect("fast call not stuck behind a busy worker");
        assert_eq!(r.body(), b"f");
    }
    for w in &w {
        w.release(1);
    }
    assert_eq!(slow.recv().await.unwrap().body(), b"s1");
    assert_eq!(slow.recv().await.unwrap().body(), b"s2");
    proxy.shutdown().await;
    lb.stop().await;
}

#[tokio::test]
async fn lb_stop_under_load_through_the_proxy_fails_nothing() {
    let (lb, reg) = start_lb("worker_pool_size=2\nquiet_period=0.3").await;
    let _w = workers(&lb, &["a", "b"], 2).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let proxy = proxy(&reg).await;
    let addr = proxy.addresses()[0].clone();
    let mut client = Client::connect(&addr).await;
    for i in 0..20 {
        client.send(MessageType::Call, "echo:slow", i, b"x").await;
    }
    let stop = tokio::spawn(lb.stop());
    for i in 0..20 {
        let r = client.recv().await.unwrap();
        assert_eq!((r.kind(), r.seqid()), (MessageType::Reply, i));
    }
    tokio::time::timeout(STEP, stop).await.unwrap().unwrap();
    assert!(reg.endpoints("echo").is_empty());
    proxy.shutdown().await;
}
