//! rpc-lb on real sockets: proxies' side (SPEC §4), workers' side (§5),
//! dispatch, queueing, failures, registration and graceful stop.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rpc_codec::{ExceptionKind, MessageType};

const INTERNAL: i32 = ExceptionKind::InternalError as i32;

#[tokio::test]
async fn call_goes_through_with_seqid_and_body_intact() {
    let (lb, _reg) = start_lb("").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    for seqid in [i32::MIN, -1, 0, 42, i32::MAX] {
        let r = c.call("echo", seqid, b"\x0bhello").await;
        assert_eq!(r.kind(), MessageType::Reply);
        assert_eq!(
            (r.name(), r.seqid(), r.body()),
            (&b"echo"[..], seqid, &b"\x0bhello"[..])
        );
    }
    // A multiplexed name for this service arrives at the worker bare.
    let r = c.call("echo:tag", 7, b"").await;
    assert_eq!((r.name(), r.body()), (&b"tag"[..], &b"a"[..]));
    // Heartbeats from a proxy come back unchanged.
    c.send(MessageType::Heartbeat, "ping", 99, b"").await;
    let hb = c.recv().await.unwrap();
    assert_eq!(
        (hb.kind(), hb.name(), hb.seqid()),
        (MessageType::Heartbeat, &b"ping"[..], 99)
    );
    // Worker errors pass through untouched.
    let (kind, _) = exception_text(&c.call("nope", 5, b"").await);
    assert_eq!(kind, ExceptionKind::UnknownMethod as i32);
    assert_eq!(w[0].calls(), 7);
}

#[tokio::test]
async fn colliding_seqids_of_two_proxies_each_get_their_own_reply() {
    let (lb, _reg) = start_lb("worker_pool_size=4").await;
    let _w = workers(&lb, &["a"], 4).await;
    let mut c = Client::connect(lb.front_address()).await;
    let mut d = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "slow", 7, b"from c").await;
    d.send(MessageType::Call, "slow", 7, b"from d").await;
    assert_eq!(d.recv().await.unwrap().body(), b"from d");
    assert_eq!(c.recv().await.unwrap().body(), b"from c");
}

#[tokio::test]
async fn worker_never_gets_more_than_pool_size_at_once() {
    let (lb, _reg) = start_lb("worker_pool_size=2").await;
    let w = workers(&lb, &["a", "b"], 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    for i in 0..24 {
        c.send(MessageType::Call, "slow", i, format!("{i}").as_bytes())
            .await;
    }
    let replies = c.recv_n(24).await;
    for (i, r) in &replies {
        assert_eq!(r.kind(), MessageType::Reply);
        assert_eq!(r.body(), format!("{i}").as_bytes());
    }
    for w in &w {
        assert_eq!(
            w.state.max_inflight.load(Ordering::SeqCst),
            2,
            "worker {}",
            w.tag
        );
    }
    assert_eq!(w[0].calls() + w[1].calls(), 24);
}

#[tokio::test]
async fn fast_calls_go_to_idle_workers_not_behind_a_stuck_one() {
    let (lb, _reg) = start_lb("worker_pool_size=1").await;
    let w = workers(&lb, &["a", "b", "c"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"stuck").await;
    eventually("the blocking call reaches a worker", || {
        w.iter().map(TestWorker::inflight).sum::<usize>() == 1
    })
    .await;
    let stuck = w.iter().find(|w| w.inflight() == 1).unwrap();
    for i in 2..40 {
        let r = tokio::time::timeout(Duration::from_secs(1), c.call("tag", i, b""))
            .await
            .expect("a fast call never waits behind the stuck worker");
        assert_ne!(r.body(), stuck.tag.as_bytes());
    }
    assert_eq!(stuck.calls(), 1);
    stuck.release(1);
    assert_eq!(c.recv().await.unwrap().body(), b"stuck");
}

#[tokio::test]
async fn round_robin_stays_selectable_and_ignores_load() {
    let (lb, _reg) = start_lb("worker_pool_size=1\ndispatch=round_robin").await;
    let w = workers(&lb, &["a", "b"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"stuck").await;
    eventually("the blocking call reaches a worker", || {
        w.iter().map(TestWorker::inflight).sum::<usize>() == 1
    })
    .await;
    let stuck = w.iter().position(|w| w.inflight() == 1).unwrap();
    // The next two calls rotate over both workers: one lands behind the
    // stuck call, as in the original.
    c.send(MessageType::Call, "tag", 2, b"").await;
    c.send(MessageType::Call, "tag", 3, b"").await;
    eventually("both calls reach the workers", || {
        w[0].calls() + w[1].calls() == 3
    })
    .await;
    assert_eq!(w[stuck].calls(), 2);
    let first = c.recv().await.unwrap();
    assert_eq!(first.body(), w[1 - stuck].tag.as_bytes());
    w[stuck].release(1);
    let rest = c.recv_n(2).await;
    assert_eq!(rest[&1].body(), b"stuck");
}

#[tokio::test]
async fn requests_wait_in_the_queue_until_a_slot_frees() {
    let (lb, _reg) = start_lb("worker_pool_size=1").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"first").await;
    c.send(MessageType::Call, "echo", 2, b"second").await;
    c.send(MessageType::Call, "echo", 3, b"third").await;
    eventually("two requests queued", || lb.stats().queued == 2).await;
    assert_eq!(w[0].calls(), 1, "queued requests are not sent");
    w[0].release(1);
    let r = c.recv_n(3).await;
    assert_eq!(r[&1].body(), b"first");
    assert_eq!(r[&2].body(), b"second");
    assert_eq!(r[&3].body(), b"third");
    assert_eq!(w[0].state.max_inflight.load(Ordering::SeqCst), 1);
    assert_eq!(lb.stats().queued, 0);
}

#[tokio::test]
async fn prefetch_hands_busy_workers_calls_that_wait_inside_them() {
    let (lb, _reg) = start_lb("worker_pool_size=1\nworker_prefetch=1").await;
    let w = workers(&lb, &["a", "b"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    for i in 0..5 {
        c.send(MessageType::Call, "block", i, format!("{i}").as_bytes())
            .await;
    }
    // One running and one waiting inside each worker; the fifth waits in
    // the LB, where whichever worker frees first can take it.
    eventually("two calls in each worker, one queued", || {
        w[0].inflight() == 2 && w[1].inflight() == 2 && lb.stats().queued == 1
    })
    .await;
    for w in &w {
        w.release(3);
    }
    let replies = c.recv_n(5).await;
    for (i, r) in &replies {
        assert_eq!(r.body(), format!("{i}").as_bytes());
    }
    for w in &w {
        assert_eq!(w.state.max_inflight.load(Ordering::SeqCst), 2, "{}", w.tag);
    }
}

#[test]
fn prefetch_beyond_its_bound_is_a_config_error() {
    let err = rpc_lb::validate(&lb_config("worker_prefetch=65")).unwrap_err();
    assert!(err.to_string().contains("worker_prefetch = 65"), "{err}");
    assert!(rpc_lb::validate(&lb_config("worker_prefetch=64")).is_ok());
}

#[tokio::test]
async fn queued_request_past_its_deadline_times_out_without_being_sent() {
    let (lb, _reg) = start_lb("worker_pool_size=1\nrpc_timeout=0.3").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"first").await;
    eventually("the first call is in flight", || w[0].inflight() == 1).await;
    c.send(MessageType::Call, "echo", 2, b"late").await;
    let r = c.recv_n(2).await;
    let (kind, text) = exception_text(&r[&2]);
    assert_eq!(kind, INTERNAL);
    assert!(text.starts_with("Timeout Exception: echo:echo"), "{text}");
    assert_eq!(r[&2].name(), b"echo");
    // The in-flight one times out toward the caller too.
    assert!(exception_text(&r[&1]).1.contains("Timeout Exception"));
    w[0].release(1);
    // The slot comes back once the worker answers; the expired request
    // never reached it.
    eventually("slot freed", || lb.stats().inflight == 0).await;
    assert_eq!(c.call("echo", 3, b"ok").await.body(), b"ok");
    assert!(!w[0].saw_body(b"late"));
    assert_eq!(w[0].calls(), 2);
}

#[tokio::test]
async fn full_queue_answers_at_once() {
    let (lb, _reg) = start_lb("worker_pool_size=1\nqueue_size=1").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"first").await;
    c.send(MessageType::Call, "echo", 2, b"queued").await;
    eventually("one request queued", || lb.stats().queued == 1).await;
    c.send(MessageType::Call, "echo", 3, b"rejected").await;
    // Answered while the other two still wait.
    let r = c.recv().await.unwrap();
    assert_eq!(r.seqid(), 3);
    let (kind, text) = exception_text(&r);
    assert_eq!(kind, INTERNAL);
    assert!(
        text.contains("echo:echo") && text.contains("queue full"),
        "{text}"
    );
    w[0].release(1);
    let r = c.recv_n(2).await;
    assert_eq!(r[&2].body(), b"queued");
    assert!(!w[0].saw_body(b"rejected"));
}

#[tokio::test]
async fn killed_worker_fails_only_its_inflight_and_queued_ones_go_to_others() {
    let (lb, _reg) = start_lb("worker_pool_size=1").await;
    let mut w = workers(&lb, &["a", "b"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"one").await;
    c.send(MessageType::Call, "block", 2, b"two").await;
    eventually("both workers busy", || {
        w[0].inflight() == 1 && w[1].inflight() == 1
    })
    .await;
    c.send(MessageType::Call, "echo", 3, b"queued").await;
    eventually("one request queued", || lb.stats().queued == 1).await;
    let (victim, seq_lost, seq_kept) = if w[0].saw_body(b"one") {
        (0, 1, 2)
    } else {
        (1, 2, 1)
    };
    w.remove(victim).kill();
    let r = c.recv().await.unwrap();
    assert_eq!(r.seqid(), seq_lost);
    let (kind, text) = exception_text(&r);
    assert_eq!(kind, INTERNAL);
    assert!(text.contains("echo:block failed"), "{text}");
    eventually("worker gone", || lb.stats().workers == 1).await;
    assert_eq!(lb.stats().queued, 1, "queued request stays queued");
    w[0].release(1);
    let r = c.recv_n(2).await;
    assert_eq!(r[&seq_kept].kind(), MessageType::Reply);
    assert_eq!(r[&3].body(), b"queued");
}

#[tokio::test]
async fn stopping_worker_is_confirmed_gets_nothing_new_and_delivers_its_replies() {
    let (lb, _reg) = start_lb("worker_pool_size=2").await;
    let w = workers(&lb, &["a", "b"], 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"in flight").await;
    eventually("call in flight", || w[0].inflight() + w[1].inflight() == 1).await;
    let (stopping, other) = if w[0].inflight() == 1 {
        (&w[0], &w[1])
    } else {
        (&w[1], &w[0])
    };
    stopping.send_stop();
    eventually("STOP_CONFIRM", || {
        stopping.state.stop_confirmed.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(lb.stats().workers, 1);
    for i in 2..12 {
        assert_eq!(c.call("tag", i, b"").await.body(), other.tag.as_bytes());
    }
    assert_eq!(stopping.calls(), 1);
    stopping.release(1);
    let r = c.recv().await.unwrap();
    assert_eq!((r.seqid(), r.body()), (1, &b"in flight"[..]));
}

#[tokio::test]
async fn heartbeats_reach_workers_and_a_silent_worker_is_dropped() {
    let (lb, _reg) =
        start_lb("heartbeat_interval_ms=50\nheartbeat_timeout_ms=500\nworker_pool_size=1").await;
    let w = workers(&lb, &["a", "b"], 1).await;
    eventually("heartbeats written", || {
        w.iter()
            .all(|w| w.state.heartbeats.load(Ordering::SeqCst) >= 3)
    })
    .await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Call, "block", 1, b"x").await;
    eventually("call in flight", || w[0].inflight() + w[1].inflight() == 1).await;
    let (silent, alive) = if w[0].inflight() == 1 {
        (&w[0], &w[1])
    } else {
        (&w[1], &w[0])
    };
    silent.state.silent.store(true, Ordering::SeqCst);
    let r = c.recv().await.unwrap();
    let (kind, text) = exception_text(&r);
    assert_eq!(kind, INTERNAL);
    assert!(text.contains("no heartbeat"), "{text}");
    eventually("silent worker closed", || {
        silent.state.closed.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(lb.stats().workers, 1);
    // Echoing workers are kept well past the timeout.
    assert!(!alive.state.closed.load(Ordering::SeqCst));
    assert_eq!(c.call("tag", 2, b"").await.body(), alive.tag.as_bytes());
}

#[tokio::test]
async fn registers_after_a_worker_and_leaves_after_the_grace_without_one() {
    let (lb, reg) = start_lb("register_delay=0.1\nno_worker_grace=0.3").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        reg.endpoints("echo").is_empty(),
        "no worker, no registration"
    );

    let w = TestWorker::connect(lb.back_address(), "a", 1).await;
    eventually("registered", || reg.endpoints("echo").len() == 1).await;
    let e = &reg.endpoints("echo")[0];
    assert_eq!(e.frontend, lb.front_address().to_string());
    assert_eq!(e.service_id, rpc_registry::service_id(&e.frontend));

    w.kill();
    eventually("worker gone", || lb.stats().workers == 0).await;
    assert_eq!(
        reg.endpoints("echo").len(),
        1,
        "kept during the grace period"
    );
    eventually("deregistered", || reg.endpoints("echo").is_empty()).await;

    let _w = TestWorker::connect(lb.back_address(), "b", 1).await;
    eventually("registered again", || reg.endpoints("echo").len() == 1).await;
    lb.stop().await;
    assert!(reg.endpoints("echo").is_empty());
}

#[tokio::test]
async fn stop_deregisters_first_and_finishes_calls_in_flight() {
    let (lb, reg) = start_lb("worker_pool_size=4\nquiet_period=0.2").await;
    let w = workers(&lb, &["a"], 4).await;
    eventually("registered", || reg.endpoints("echo").len() == 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    for i in 0..8 {
        c.send(MessageType::Call, "block", i, b"x").await;
    }
    eventually("slots full", || w[0].inflight() == 4).await;
    let stop = tokio::spawn(lb.stop());
    eventually("deregistered", || reg.endpoints("echo").is_empty()).await;
    // Still serving through the quiet period and after.
    w[0].release(8);
    let r = c.recv_n(8).await;
    assert!(r
        .values()
        .all(|m| m.kind() == MessageType::Reply && m.body() == b"x"));
    tokio::time::timeout(STEP, stop).await.unwrap().unwrap();
    assert!(c.recv().await.is_none(), "connection closed after the stop");
    eventually("worker connection closed", || {
        w[0].state.closed.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test]
async fn oneway_reaches_a_worker_and_gets_no_answer() {
    let (lb, _reg) = start_lb("").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    c.send(MessageType::Oneway, "log", 1, b"fire").await;
    let r = c.call("echo", 2, b"after").await;
    assert_eq!(r.seqid(), 2, "no reply for the oneway");
    eventually("oneway delivered", || {
        w[0].state.oneways.lock().unwrap().as_slice() == [b"fire".to_vec()]
    })
    .await;
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let (lb, _reg) = start_lb("max_frame_size=1000").await;
    let _w = workers(&lb, &["a"], 1).await;
    let mut good = Client::connect(lb.front_address()).await;
    for raw in [
        &[0u8, 0, 0, 4, 1, 2, 3, 4][..],       // not a strict header
        &[0u8, 0, 0x10, 0, 0x80, 1, 0, 1][..], // over max_frame_size
        &[0xffu8, 0xff, 0xff, 0xff][..],       // negative length
    ] {
        let mut bad = Client::connect(lb.front_address()).await;
        bad.send_raw(raw).await;
        let r = bad.recv().await.expect("an error reply before closing");
        assert_eq!(exception_text(&r).0, ExceptionKind::ProtocolError as i32);
        assert!(bad.recv().await.is_none(), "closed after the error");
        assert_eq!(good.call("echo", 1, b"fine").await.body(), b"fine");
    }
}

#[tokio::test]
async fn workers_may_dial_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lb.sock");
    let (lb, _reg) = start_lb(&format!("back_address={}", sock.display())).await;
    assert!(lb.back_address().is_unix());
    let _w = workers(&lb, &["a"], 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    assert_eq!(c.call("tag", 1, b"").await.body(), b"a");
}

#[tokio::test]
async fn malformed_worker_is_dropped_alone() {
    let (lb, _reg) = start_lb("worker_pool_size=1").await;
    let w = workers(&lb, &["a"], 1).await;
    let mut bad = Client::connect(lb.back_address()).await;
    eventually("second worker counted", || lb.stats().workers == 2).await;
    bad.send_raw(&[0, 0, 0, 4, 1, 2, 3, 4]).await;
    assert!(bad.recv().await.is_none(), "bad worker disconnected");
    eventually("bad worker removed", || lb.stats().workers == 1).await;
    let mut c = Client::connect(lb.front_address()).await;
    assert_eq!(c.call("tag", 1, b"").await.body(), b"a");
    assert_eq!(w[0].calls(), 1);
}

#[tokio::test]
async fn stuck_call_times_out_on_time_while_others_flow_past_it() {
    let (lb, _reg) = start_lb("worker_pool_size=2\nrpc_timeout=0.5").await;
    let w = workers(&lb, &["a"], 2).await;
    let mut c = Client::connect(lb.front_address()).await;
    let start = tokio::time::Instant::now();
    c.send(MessageType::Call, "block", 1, b"stuck").await;
    eventually("the stuck call is in flight", || w[0].inflight() == 1).await;
    // Many calls pass through the other slot meanwhile.
    for i in 2..100 {
        assert_eq!(c.call("echo", i, b"x").await.seqid(), i);
    }
    let r = c.recv().await.unwrap();
    assert_eq!(r.seqid(), 1);
    assert!(exception_text(&r).1.contains("Timeout Exception"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The slot stays taken until the worker answers.
    assert_eq!(lb.stats().inflight, 1);
    w[0].release(1);
    eventually("slot freed", || lb.stats().inflight == 0).await;
}
