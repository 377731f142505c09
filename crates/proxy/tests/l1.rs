//! Client-facing behaviour of SPEC §3, on real sockets.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpc_codec::{ExceptionKind, MessageType};

async fn proxy_with(
    endpoints: &[&TestEndpoint],
    extra: &str,
) -> (rpc_proxy::ProxyHandle, rpc_transport::Address, MemRegistry) {
    let reg = MemRegistry::new();
    reg.set(
        "echo",
        endpoints.iter().map(|e| e.endpoint("echo")).collect(),
    );
    let (proxy, addr) = start_proxy(&test_config(extra), Arc::new(reg.clone())).await;
    (proxy, addr, reg)
}

#[tokio::test]
async fn call_is_routed_with_prefix_stripped_and_seqid_restored() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;
    let r = c.call("echo:echo", 42, b"\x0bhello").await;
    assert_eq!(r.kind(), MessageType::Reply);
    assert_eq!(r.name(), b"echo", "reply carries the bare method name");
    assert_eq!(r.seqid(), 42);
    assert_eq!(r.body(), b"\x0bhello");
}

#[tokio::test]
async fn any_client_seqid_comes_back_unchanged() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;
    for seqid in [i32::MIN, -1, 0, 1, i32::MAX] {
        assert_eq!(c.call("echo:echo", seqid, b"x").await.seqid(), seqid);
    }
    // Two connections may use the same seqids at once.
    let mut d = Client::connect(&addr).await;
    c.send(MessageType::Call, "echo:slow", 7, b"c").await;
    d.send(MessageType::Call, "echo:echo", 7, b"d").await;
    assert_eq!(d.recv().await.unwrap().body(), b"d");
    assert_eq!(c.recv().await.unwrap().body(), b"c");
}

#[tokio::test]
async fn pipelined_replies_keep_request_order_behind_a_slow_call() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;
    c.send(MessageType::Call, "echo:slow", 1, b"slow").await;
    for i in 2..=20 {
        c.send(
            MessageType::Call,
            "echo:echo",
            i,
            format!("fast{i}").as_bytes(),
        )
        .await;
    }
    let first = c.recv().await.unwrap();
    assert_eq!((first.seqid(), first.body()), (1, &b"slow"[..]));
    for i in 2..=20 {
        let r = c.recv().await.unwrap();
        assert_eq!(r.seqid(), i);
        assert_eq!(r.body(), format!("fast{i}").as_bytes());
    }
}

#[tokio::test]
async fn name_without_colon_and_unknown_service_get_unknown_and_keep_the_connection() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;

    let r = c.call("echo", 3, b"").await;
    let (kind, text) = exception_text(&r);
    assert_eq!(
        (kind, r.seqid(), r.name()),
        (ExceptionKind::Unknown as i32, 3, &b"echo"[..])
    );
    assert!(text.contains("Not Found"), "{text}");

    let r = c.call("nosuch:ping", 4, b"").await;
    let (kind, text) = exception_text(&r);
    assert_eq!(
        (kind, r.name()),
        (ExceptionKind::Unknown as i32, &b"ping"[..])
    );
    assert!(text.contains("nosuch"), "{text}");

    assert_eq!(c.call("echo:echo", 5, b"ok").await.body(), b"ok");
}

#[tokio::test]
async fn known_service_without_endpoint_gets_internal_error_naming_it() {
    let (_proxy, addr, reg) = proxy_with(&[], "").await;
    reg.set("lonely", vec![]);
    let mut c = Client::connect(&addr).await;
    // Until the proxy has the new table the service is unknown.
    let deadline = tokio::time::Instant::now() + STEP;
    let (kind, text) = loop {
        let (kind, text) = exception_text(&c.call("lonely:work", 9, b"").await);
        if !text.contains("Not Found") {
            break (kind, text);
        }
        assert!(tokio::time::Instant::now() < deadline, "service never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(kind, ExceptionKind::InternalError as i32);
    assert!(text.contains("lonely") && text.contains("work"), "{text}");
}

#[tokio::test]
async fn heartbeat_from_client_is_answered_by_the_proxy() {
    let (_proxy, addr, _reg) = proxy_with(&[], "").await;
    let mut c = Client::connect(&addr).await;
    c.send(MessageType::Heartbeat, "ping", 77, b"").await;
    let r = c.recv().await.unwrap();
    assert_eq!(
        (r.kind(), r.name(), r.seqid(), r.body()),
        (MessageType::Reply, &b"ping"[..], 77, &[0u8][..])
    );
}

#[tokio::test]
async fn oneway_is_forwarded_and_never_answered() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;
    c.send(MessageType::Oneway, "echo:notify", 1, b"note").await;
    // The next reply on the connection belongs to the next call.
    let r = c.call("echo:echo", 2, b"after").await;
    assert_eq!((r.seqid(), r.body()), (2, &b"after"[..]));
    eventually("oneway delivered", || ep.oneways.lock().unwrap().len() == 1).await;
    assert_eq!(ep.oneways.lock().unwrap()[0], b"note");
}

#[tokio::test]
async fn unix_socket_listener_and_unix_endpoint_in_product_test() {
    let dir = tempfile::tempdir().unwrap();
    let ep = TestEndpoint::start_on(
        &rpc_transport::Address::Unix(dir.path().join("ep.sock")),
        "u",
    )
    .await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    let config = test_config(&format!(
        "proxy_address={}",
        dir.path().join("proxy.sock").display()
    ));
    let (_proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    assert!(addr.is_unix());
    let mut c = Client::connect(&addr).await;
    assert_eq!(c.call("echo:tag", 1, b"").await.body(), b"u");
}

#[tokio::test]
async fn unix_endpoints_are_ignored_outside_product_test() {
    let dir = tempfile::tempdir().unwrap();
    let ep = TestEndpoint::start_on(
        &rpc_transport::Address::Unix(dir.path().join("ep.sock")),
        "u",
    )
    .await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    let (_proxy, addr) = start_proxy(&test_config("product=online_x"), Arc::new(reg)).await;
    let mut c = Client::connect(&addr).await;
    let (kind, _) = exception_text(&c.call("echo:tag", 1, b"").await);
    assert_eq!(kind, ExceptionKind::InternalError as i32);
    assert_eq!(ep.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn request_deadline_answers_timeout_and_drops_the_late_reply() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "rpc_timeout=0.2").await;
    let mut c = Client::connect(&addr).await;
    let r = c.call("echo:hang", 1, b"").await;
    let (kind, text) = exception_text(&r);
    assert_eq!((kind, r.seqid()), (ExceptionKind::InternalError as i32, 1));
    assert!(
        text.contains("Timeout") && text.contains("echo:hang"),
        "{text}"
    );
    // A slow reply arriving after its deadline is dropped safely.
    let r = c.call("echo:slow", 2, b"").await;
    assert_eq!(exception_text(&r).0, ExceptionKind::InternalError as i32);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.call("echo:echo", 3, b"still fine").await.body(),
        b"still fine"
    );
}

#[tokio::test]
async fn traffic_is_shared_by_two_endpoints() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let (_proxy, addr, _reg) = proxy_with(&[&a, &b], "balance=round_robin").await;
    let mut c = Client::connect(&addr).await;
    let (mut na, mut nb) = (0, 0);
    for i in 0..200 {
        match c.call("echo:tag", i, b"").await.body() {
            b"a" => na += 1,
            b"b" => nb += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(na > 20 && nb > 20, "round_robin: a={na} b={nb}");

    // p2c weighs latency: one call at a time, two equal endpoints take
    // turns in runs (a noisy slow reply sends the next calls to the other),
    // not call by call. What it promises is that neither is starved: the
    // one not chosen looks cheaper as its estimate decays, and is tried
    // again. A short decay makes that quick.
    let (_proxy, addr, _reg) = proxy_with(&[&a, &b], "balance=p2c\nbalance_decay_ms=20").await;
    let mut c = Client::connect(&addr).await;
    tags_until_each_over(&mut c, &[&a, &b], 20, STEP).await;
}

#[tokio::test]
async fn p2c_shuns_a_slow_endpoint_and_returns_to_it_once_fast() {
    let (fast, slow) = (
        TestEndpoint::start("fast").await,
        TestEndpoint::start("slow").await,
    );
    slow.delay_ms.store(20, Ordering::SeqCst);
    // With a 200 ms decay a 20 ms endpoint looks as cheap as a sub-ms one
    // again only after 0.6 s or more (200 ms × ln(20)): one call then.
    let (_proxy, addr, _reg) =
        proxy_with(&[&fast, &slow], "balance=p2c\nbalance_decay_ms=200").await;
    let mut c = Client::connect(&addr).await;
    // Warm-up: an endpoint without a latency sample costs nothing, so both
    // are tried at once.
    tags_until_each_over(&mut c, &[&fast, &slow], 0, STEP).await;

    // One call at a time: outstanding is always 0 on both, only latency
    // tells them apart (round-robin or plain least-outstanding send half).
    let counts = |e: &TestEndpoint| e.calls.load(Ordering::SeqCst);
    let (f0, s0) = (counts(&fast), counts(&slow));
    for i in 0..1000 {
        assert_eq!(c.call("echo:tag", i, b"").await.kind(), MessageType::Reply);
    }
    let (nf, ns) = (counts(&fast) - f0, counts(&slow) - s0);
    assert!(
        ns * 20 < nf + ns,
        "the slow endpoint took {ns} of {} calls",
        nf + ns
    );

    // Fast again: as its old estimate decays it is tried, found fast, and
    // takes its share again.
    slow.delay_ms.store(0, Ordering::SeqCst);
    tags_until_each_over(&mut c, &[&fast, &slow], 20, 2 * STEP).await;
}

#[tokio::test]
async fn killed_endpoint_fails_only_its_in_flight_calls() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let (_proxy, addr, _reg) = proxy_with(&[&a, &b], "balance=round_robin").await;
    let mut c = Client::connect(&addr).await;
    // Warm both connections, then park one hanging call on each.
    for i in 0..4 {
        c.call("echo:echo", i, b"").await;
    }
    let mut hung = Client::connect(&addr).await;
    hung.send(MessageType::Call, "echo:hang", 100, b"").await;
    hung.send(MessageType::Call, "echo:hang", 101, b"").await;
    eventually("both hang calls arrived", || {
        a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst) >= 6
    })
    .await;
    a.kill().await;
    let r = hung.recv().await.unwrap();
    let (kind, text) = exception_text(&r);
    assert_eq!(kind, ExceptionKind::InternalError as i32);
    assert!(text.contains("echo:hang"), "{text}");
    for i in 0..50 {
        let r = c.call("echo:tag", 1000 + i, b"").await;
        assert_eq!(r.body(), b"b", "after the kill everything goes to b");
    }
}

#[tokio::test]
async fn stalled_endpoint_fails_at_heartbeat_timeout_not_rpc_timeout() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let (_proxy, addr, _reg) = proxy_with(
        &[&a, &b],
        "rpc_timeout=30\nheartbeat_interval_ms=100\nheartbeat_timeout_ms=600\nbalance=round_robin",
    )
    .await;
    let mut c = Client::connect(&addr).await;
    for i in 0..4 {
        c.call("echo:echo", i, b"").await;
    }
    a.stalled.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut failed = 0;
    for i in 0..10 {
        let r = c.call("echo:tag", 10 + i, b"").await;
        if r.kind() == MessageType::Exception {
            failed += 1;
        } else {
            assert_eq!(r.body(), b"b");
        }
    }
    assert!(
        failed <= 1,
        "only the call parked on the stalled endpoint fails, got {failed}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn removed_endpoint_finishes_in_flight_and_gets_nothing_new() {
    let (a, b) = (
        TestEndpoint::start("a").await,
        TestEndpoint::start("b").await,
    );
    let (_proxy, addr, reg) = proxy_with(&[&a], "").await;
    let mut slow = Client::connect(&addr).await;
    slow.send(MessageType::Call, "echo:slow", 1, b"in flight")
        .await;
    eventually("slow call arrived", || a.calls.load(Ordering::SeqCst) == 1).await;
    reg.set("echo", vec![b.endpoint("echo")]);
    let mut c = Client::connect(&addr).await;
    // The table switches from [a] to [b] at once: the first answer from b
    // means the new table is in force.
    let deadline = tokio::time::Instant::now() + STEP;
    while c.call("echo:tag", 100, b"").await.body() != b"b" {
        assert!(tokio::time::Instant::now() < deadline, "b never routable");
    }
    let a_calls = a.calls.load(Ordering::SeqCst);
    for i in 0..20 {
        assert_eq!(c.call("echo:tag", i, b"").await.body(), b"b");
    }
    let r = slow.recv().await.unwrap();
    assert_eq!(
        (r.kind(), r.body()),
        (MessageType::Reply, &b"in flight"[..])
    );
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        a_calls,
        "nothing new reached a"
    );
}

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "max_frame_size=1024").await;
    let mut good = Client::connect(&addr).await;

    // Oversized frame whose header is readable: told, then closed.
    let mut c = Client::connect(&addr).await;
    let mut big = rpc_codec::encode_message(MessageType::Call, b"echo:echo", 5, &[]).to_vec();
    big[0..4].copy_from_slice(&4096u32.to_be_bytes());
    c.send_raw(&big).await;
    let r = c.recv().await.expect("an error reply before closing");
    let (kind, text) = exception_text(&r);
    assert_eq!((kind, r.seqid()), (ExceptionKind::ProtocolError as i32, 5));
    assert!(text.contains("exceeds"), "{text}");
    assert!(c.recv().await.is_none());

    for raw in [
        (-1i32).to_be_bytes().to_vec(), // negative length
        0i32.to_be_bytes().to_vec(),    // empty frame
        [&8i32.to_be_bytes()[..], &[0x80, 0x02, 0, 1, 0, 0, 0, 0]].concat(), // bad version
        [
            &13i32.to_be_bytes()[..],
            &4i32.to_be_bytes(),
            b"ping",
            &[1],
            &9i32.to_be_bytes(),
        ]
        .concat(), // non-strict
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(), // noise
    ] {
        let mut c = Client::connect(&addr).await;
        c.send_raw(&raw).await;
        // An exception may precede the close; the connection must end.
        loop {
            match c.recv().await {
                None => break,
                Some(m) => assert_eq!(m.kind(), MessageType::Exception),
            }
        }
    }
    // Truncated frame then close.
    let mut c = Client::connect(&addr).await;
    c.send_raw(&[0, 0, 0, 50, 0x80, 1]).await;
    drop(c);

    assert_eq!(
        good.call("echo:echo", 1, b"unaffected").await.body(),
        b"unaffected"
    );
}

#[tokio::test]
async fn graceful_stop_answers_calls_in_flight() {
    let ep = TestEndpoint::start("a").await;
    let (proxy, addr, _reg) = proxy_with(&[&ep], "").await;
    let mut c = Client::connect(&addr).await;
    c.send(MessageType::Call, "echo:slow", 1, b"last").await;
    eventually("call arrived", || ep.calls.load(Ordering::SeqCst) == 1).await;
    let stopping = tokio::spawn(proxy.shutdown());
    let r = c.recv().await.unwrap();
    assert_eq!(r.body(), b"last");
    tokio::time::timeout(STEP, stopping)
        .await
        .expect("stops in time")
        .unwrap();
    assert!(
        rpc_transport::Stream::connect(&addr).await.is_err(),
        "no longer accepting"
    );
}

/// An endpoint that answers inline (it stops reading while a reply is being
/// written) and a client pipelining large requests: the proxy must keep
/// reading replies while its writes wait, or both sides block for good.
#[tokio::test]
async fn large_pipeline_to_an_inline_endpoint_does_not_deadlock() {
    use futures::{SinkExt, StreamExt};
    use rpc_codec::{encode_message, FrameCodec, Message};
    use rpc_transport::{Listener, Stream};
    use tokio_util::codec::Framed;

    let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_address();
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut io = Framed::new(stream, FrameCodec::new(4 << 20));
                while let Some(Ok(frame)) = io.next().await {
                    let m = Message::parse(frame).unwrap();
                    let reply = match m.kind() {
                        MessageType::Heartbeat => m.into_inner(),
                        _ => encode_message(MessageType::Reply, m.name(), m.seqid(), m.body()),
                    };
                    if io.send(reply.freeze()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let reg = MemRegistry::new();
    reg.set(
        "echo",
        vec![rpc_registry::Endpoint::new("echo", &address.to_string())],
    );
    let (_proxy, addr) = start_proxy(&test_config(""), Arc::new(reg)).await;

    const N: i32 = 48;
    let body = vec![7u8; 512 << 10];
    let (mut tx, mut rx) = Framed::new(
        Stream::connect(&addr).await.unwrap(),
        FrameCodec::new(4 << 20),
    )
    .split();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let m = encode_message(MessageType::Call, b"echo:echo", i, &body);
            tx.send(m.freeze()).await.unwrap();
        }
        tx
    });
    let received = tokio::time::timeout(STEP * 4, async {
        let mut n = 0;
        while n < N {
            let m = Message::parse(rx.next().await.unwrap().unwrap()).unwrap();
            assert_eq!(
                (m.kind(), m.seqid(), m.body().len()),
                (MessageType::Reply, n, 512 << 10)
            );
            n += 1;
        }
        n
    })
    .await
    .expect("every reply arrives");
    assert_eq!(received, N);
    drop(sender.await.unwrap());
}

/// Half a header and then silence, or a frame trickled a byte at a time:
/// closed once `frame_timeout` passes, while idle connections stay open.
#[tokio::test]
async fn incomplete_frame_is_closed_after_frame_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ep = TestEndpoint::start("a").await;
    let (_proxy, addr, _reg) = proxy_with(&[&ep], "frame_timeout=0.5").await;
    let mut idle = Client::connect(&addr).await;
    let mut half = Client::connect(&addr).await;
    half.send_raw(&[0, 0, 0, 40, 0x80, 1]).await;
    let r = half.recv().await.expect("an error reply before closing");
    let (kind, text) = exception_text(&r);
    assert_eq!(kind, ExceptionKind::ProtocolError as i32);
    assert!(text.contains("incomplete"), "{text}");
    assert!(half.recv().await.is_none());

    // One byte every 50 ms of a 90-byte frame: cut off after 0.5 s.
    let mut trickle = rpc_transport::Stream::connect(&addr).await.unwrap();
    let frame = rpc_codec::encode_message(MessageType::Call, b"echo:echo", 3, &[0; 64]);
    let started = tokio::time::Instant::now();
    for b in frame.iter() {
        if trickle.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(STEP, trickle.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the proxy closed the trickling connection");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_millis(50 * frame.len() as u64));

    assert_eq!(
        idle.call("echo:echo", 1, b"still here").await.body(),
        b"still here"
    );
}

#[tokio::test]
async fn unix_listeners_get_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (extra, want) in [("", 0o660), ("socket_mode=0600\n", 0o600)] {
        let path = dir.path().join(format!("proxy-{want:o}.sock"));
        let config = test_config(&format!("{extra}proxy_address={}", path.display()));
        let (proxy, _addr) = start_proxy(&config, Arc::new(MemRegistry::new())).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{extra:?}");
        proxy.shutdown().await;
    }
}
