//! The load generator against real servers on loopback: a correct one
//! (the benchmark service itself) and deliberately wrong ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rpc_bench::load::{self, LoadConfig};
use rpc_bench::report::{Live, Report};
use rpc_bench::server::BenchHandler;
use rpc_bench::wire;
use rpc_codec::{FrameCodec, Message};
use rpc_sdk::{Service, ServiceHandle};
use rpc_transport::{Address, FrameReader, FrameWriter, Listener};

/// Every test finishes well within this.
const LIMIT: Duration = Duration::from_secs(30);

struct GoodServer {
    addr: Address,
    svc: ServiceHandle,
}

/// The benchmark service as `rpc-bench-server` runs it: the SDK service
/// with the bench handler, not registered.
async fn good_server(addr: &str) -> GoodServer {
    let config = rpc_config::Config {
        stand_alone: true,
        ..Default::default()
    };
    let svc = Service::new(config, BenchHandler::default())
        .listen_on([addr.parse().unwrap()])
        .start()
        .await
        .unwrap();
    GoodServer {
        addr: svc.address().clone(),
        svc,
    }
}

fn quick(target: &Address) -> LoadConfig {
    LoadConfig {
        target: target.clone(),
        direct: true,
        connections: 2,
        depth: 4,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        ..LoadConfig::default()
    }
}

async fn run(cfg: LoadConfig) -> Report {
    tokio::time::timeout(LIMIT, load::run(cfg, Arc::new(Live::default())))
        .await
        .expect("run ends in time")
        .expect("target reachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_good_server_every_request_answered_and_counted() {
    let s = good_server("127.0.0.1:0").await;
    let r = run(LoadConfig {
        slow_fraction: 0.05,
        slow_ms: 5,
        fail_fraction: 0.05,
        payload: 300,
        ..quick(&s.addr)
    })
    .await;
    let c = &r.counts;
    assert!(r.passed, "{}", r.summary());
    assert!(c.sent > 100, "{}", r.summary());
    assert_eq!(c.sent, c.ok + c.expected_exceptions, "{}", r.summary());
    assert_eq!(
        (c.wrong, c.lost, c.exceptions, c.late, c.reconnects),
        (0, 0, 0, 0, 0)
    );
    assert!(c.expected_exceptions > 0 && r.latency_slow.count > 0);
    assert!(r.latency_slow.p50_us >= 5_000, "{}", r.summary());
    // The server saw exactly what the generator says it sent.
    assert_eq!(s.svc.stats().requests, c.sent);
    assert!(r.measured > 0 && r.measured <= c.ok);
    assert!(r.throughput_rps > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_prefixed_names_and_large_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sock");
    let s = good_server(path.to_str().unwrap()).await;
    // The service strips a `service:` prefix as a multiplexed server would.
    let r = run(LoadConfig {
        direct: false,
        payload: 1 << 20,
        connections: 1,
        depth: 2,
        ..quick(&s.addr)
    })
    .await;
    assert!(r.passed, "{}", r.summary());
    assert!(r.counts.ok > 0);
    assert_eq!(s.svc.stats().requests, r.counts.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_opened_and_held() {
    let s = good_server("127.0.0.1:0").await;
    let r = run(LoadConfig {
        idle_connections: 50,
        ..quick(&s.addr)
    })
    .await;
    assert!(r.passed, "{}", r.summary());
    assert_eq!(r.idle_connections_open, 50);
    // Connected, as the generator counts it, is not yet accepted.
    rpc_testkit::eventually("every connection accepted", || {
        s.svc.stats().connections == 52
    })
    .await;
}

/// How a broken server spoils its replies.
#[derive(Clone, Copy, Debug)]
enum Fault {
    WrongSeqid,
    WrongPayload,
    WrongName,
    /// Two consecutive replies trade seqids: each seqid is valid, only the
    /// payload tag shows the mix-up.
    Swapped,
    /// Some calls are never answered.
    Dropped,
    /// Exceptions instead of replies.
    Exception,
    /// The connection is closed after a while.
    Hangup,
}

/// A server answering like the benchmark service except that every
/// `every`-th call is spoiled by `fault`.
async fn bad_server(fault: Fault, every: u64) -> Address {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_address();
    tokio::spawn(async move {
        let n = Arc::new(AtomicU64::new(0));
        loop {
            let Ok(s) = l.accept().await else { return };
            let n = n.clone();
            tokio::spawn(async move {
                let (r, w) = s.into_split();
                let mut reader = FrameReader::new(r, FrameCodec::default());
                let mut writer = FrameWriter::new(w);
                let mut held: Option<BytesMut> = None;
                while let Some(Ok(frame)) = reader.next().await {
                    let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut m = Message::parse(frame).unwrap();
                    m.strip_service();
                    let args = wire::read_args(m.body()).unwrap();
                    let body_at = m.frame_len() - m.body().len();
                    let (seqid, name) = (m.seqid(), m.name().to_vec());
                    let mut reply = wire::reply_in_place(m.into_inner(), body_at, args);
                    let spoil = i.checked_rem(every) == Some(0);
                    let name_at = 12;
                    let seqid_at = name_at + name.len();
                    if spoil {
                        match fault {
                            Fault::WrongSeqid => reply[seqid_at..seqid_at + 4]
                                .copy_from_slice(&(seqid ^ 0x4000_0000).to_be_bytes()),
                            Fault::WrongPayload => {
                                let last = reply.len() - 2;
                                reply[last] ^= 0xff;
                            }
                            Fault::WrongName => reply[name_at] ^= 0x20,
                            Fault::Swapped => {
                                held = Some(reply);
                                continue;
                            }
                            Fault::Dropped => continue,
                            Fault::Exception => {
                                reply = rpc_codec::application_exception(
                                    &name,
                                    seqid,
                                    rpc_codec::ExceptionKind::InternalError,
                                    "backend failed",
                                )
                            }
                            Fault::Hangup => return,
                        }
                    }
                    if let Some(mut h) = held.take() {
                        // Give the held reply this call's seqid and vice versa.
                        let held_seqid = Message::parse(h.clone()).unwrap().seqid();
                        h[seqid_at..seqid_at + 4].copy_from_slice(&seqid.to_be_bytes());
                        reply[seqid_at..seqid_at + 4].copy_from_slice(&held_seqid.to_be_bytes());
                        writer.push(h.freeze());
                    }
                    writer.push(reply.freeze());
                    if writer.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_replies_are_caught() {
    for fault in [
        Fault::WrongSeqid,
        Fault::WrongPayload,
        Fault::WrongName,
        Fault::Swapped,
    ] {
        let addr = bad_server(fault, 50).await;
        let r = run(LoadConfig {
            timeout: Duration::from_millis(500),
            ..quick(&addr)
        })
        .await;
        assert!(!r.passed, "{fault:?} not caught: {}", r.summary());
        assert!(r.counts.wrong > 0, "{fault:?}: {}", r.summary());
        assert!(!r.errors.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_exceptions_and_hangups_are_counted() {
    let addr = bad_server(Fault::Dropped, 50).await;
    let r = run(LoadConfig {
        timeout: Duration::from_millis(300),
        ..quick(&addr)
    })
    .await;
    assert!(
        !r.passed && r.counts.lost > 0 && r.counts.wrong == 0,
        "{}",
        r.summary()
    );
    // Lost requests were replaced: the closed loop kept its depth.
    assert!(r.counts.sent > r.counts.lost * 10, "{}", r.summary());

    let addr = bad_server(Fault::Exception, 50).await;
    let mut r = run(quick(&addr)).await;
    assert!(!r.passed && r.counts.exceptions > 0, "{}", r.summary());
    r.judge(true);
    assert!(r.passed, "allowed exceptions pass: {}", r.summary());

    let addr = bad_server(Fault::Hangup, 200).await;
    let r = run(quick(&addr)).await;
    assert!(
        r.counts.reconnects > 0 && r.counts.lost > 0,
        "{}",
        r.summary()
    );
    assert!(!r.passed);
}

/// A server that stops answering for `stall` once `after` has passed.
async fn stalling_server(after: Duration, stall: Duration) -> Address {
    let stalled = Arc::new(AtomicBool::new(false));
    let s = good_server("127.0.0.1:0").await;
    let addr = s.addr.clone();
    // Relay through a gate that can hold traffic, in front of a good server.
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let front = l.local_address();
    let gate = stalled.clone();
    tokio::spawn(async move {
        let _keep = s;
        while let Ok(c) = l.accept().await {
            let up = rpc_transport::Stream::connect(&addr).await.unwrap();
            let gate = gate.clone();
            tokio::spawn(async move {
                let (cr, cw) = c.into_split();
                let (ur, uw) = up.into_split();
                let mut from_client = FrameReader::new(cr, FrameCodec::default());
                let mut to_up = FrameWriter::new(uw);
                let mut from_up = FrameReader::new(ur, FrameCodec::default());
                let mut to_client = FrameWriter::new(cw);
                let fwd = async {
                    while let Some(Ok(f)) = from_client.next().await {
                        to_up.push(f.freeze());
                        to_up.flush().await.unwrap();
                    }
                };
                let back = async {
                    while let Some(Ok(f)) = from_up.next().await {
                        while gate.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        to_client.push(f.freeze());
                        if to_client.flush().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::join!(fwd, back);
            });
        }
    });
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        stalled.store(true, Ordering::SeqCst);
        tokio::time::sleep(stall).await;
        stalled.store(false, Ordering::SeqCst);
    });
    front
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_a_stall() {
    // 1000 req/s for 1.5 s with at most one request in flight, like a
    // synchronous client; replies are held for 300 ms from t=0.6 s. The
    // ~300 requests due during the stall could only be sent after it, yet
    // measured from their intended send time they waited up to 300 ms:
    // the 90th percentile is ~150 ms by construction. Measured from the
    // actual send, only one request would look slow.
    let stall = Duration::from_millis(300);
    let addr = stalling_server(Duration::from_millis(600), stall).await;
    let r = run(LoadConfig {
        rate: Some(1000.0),
        max_outstanding: 1,
        connections: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(1500),
        ..quick(&addr)
    })
    .await;
    assert!(r.passed, "{}", r.summary());
    assert!(r.latency.max_us >= 250_000, "{}", r.summary());
    assert!(r.latency.p90_us >= 50_000, "{}", r.summary());
    // Requests due during the stall were still sent after it (how many
    // depends on how fast this machine is, so only a loose bound).
    assert!(r.counts.sent >= 500, "{}", r.summary());
}
