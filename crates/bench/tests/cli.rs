//! The two binaries as scripts use them: exit codes, JSON output, and the
//! benchmark service as a worker in front of a scripted LB.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rpc_bench::report::Report;
use rpc_bench::wire::{self, Method};
use rpc_codec::{FrameCodec, Message, MessageType};
use rpc_transport::{Address, FrameReader, FrameWriter, Listener, ReadHalf, WriteHalf};

const BENCH: &str = env!("CARGO_BIN_EXE_rpc-bench");
const SERVER: &str = env!("CARGO_BIN_EXE_rpc-bench-server");
const STEP: Duration = Duration::from_secs(10);

/// Kills the child if a test fails half-way.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts the service on a Unix socket and waits until it accepts.
fn start_server(dir: &std::path::Path) -> (Proc, String) {
    let sock = dir.join("svc.sock").to_str().unwrap().to_string();
    let child = Command::new(SERVER)
        .args(["--listen", &sock])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let deadline = Instant::now() + STEP;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (p, sock)
}

fn bench(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(BENCH);
    c.args(args)
        .args(["-D", "0.5", "-w", "0.1", "--timeout", "2"]);
    c.stdin(Stdio::null());
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn json_report_parses_and_exit_code_is_zero_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, sock) = start_server(dir.path());
    let json = dir.path().join("r.json");
    let out = bench(&[
        "-t",
        &sock,
        "--direct",
        "-c",
        "2",
        "-d",
        "2",
        "--slow-fraction",
        "0.1",
        "--slow-ms",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r.passed && r.counts.ok > 0 && r.counts.ok == r.counts.sent);
    assert_eq!((r.connections, r.depth, r.mode.as_str()), (2, 2, "closed"));
    assert!(r.latency_fast.count > 0 && r.latency_slow.count > 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PASS"));

    // `--json -` writes the document alone to stdout.
    let out = bench(&["-t", &sock, "--direct", "-r", "200", "-q", "--json", "-"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "open");
    assert!(v["throughput_rps"].as_f64().unwrap() > 0.0);
    assert!(v["latency"]["p99_us"].as_u64().unwrap() > 0);
}

/// A blocking server that answers every frame with a reply whose seqid
/// is off by one.
fn off_by_one_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut buf).is_err() {
                    return;
                }
                let mut frame = BytesMut::from(&len[..]);
                frame.extend_from_slice(&buf);
                let m = Message::parse(frame).unwrap();
                let reply = rpc_codec::encode_message(
                    MessageType::Reply,
                    m.method(),
                    m.seqid().wrapping_add(1),
                    &[0],
                );
                if s.write_all(&reply).is_err() {
                    return;
                }
            });
        }
    });
    addr
}

#[test]
fn exit_code_is_one_on_wrong_replies_and_two_when_unreachable() {
    let addr = off_by_one_server().to_string();
    let out = bench(&["-t", &addr, "-c", "1", "-d", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown seqid") && err.contains("FAIL"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let out = bench(&["-t", missing.to_str().unwrap(), "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody.sock"));
}

#[test]
fn listens_on_every_address_registers_each_and_deregisters_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    let cfg = dir.path().join("svc.ini");
    std::fs::write(
        &cfg,
        format!("zk=local:{}\nproduct=test\n", registry.display()),
    )
    .unwrap();
    let sock = dir.path().join("svc.sock");
    let port = rpc_testkit::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let mut p = Proc(
        Command::new(SERVER)
            .args(["--listen", &tcp, "--listen", sock.to_str().unwrap()])
            .args(["-c", cfg.to_str().unwrap(), "--service", "echoes"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(p.0.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    while said.len() < 4 {
        said.push(lines.next().expect("four lines").unwrap());
    }
    let sock = sock.to_str().unwrap();
    assert_eq!(
        said,
        [
            format!("listening on {tcp}"),
            format!("listening on {sock}"),
            format!("registered echoes at {tcp}"),
            format!("registered echoes at {sock}"),
        ]
    );
    let entries = || {
        std::fs::read_dir(registry.join("test/services/echoes"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(entries(), 2);
    for target in [tcp.as_str(), sock] {
        let out = bench(&["-t", target, "--service", "echoes", "-c", "1", "-d", "4"]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(STEP).success());
    assert_eq!(entries(), 0, "deregistered before exiting");
}

/// The LB side of one worker connection.
struct Lb {
    r: FrameReader,
    w: FrameWriter<WriteHalf>,
}

impl Lb {
    async fn accept(l: &Listener) -> Lb {
        let s = tokio::time::timeout(STEP, l.accept())
            .await
            .unwrap()
            .unwrap();
        let (r, w): (ReadHalf, WriteHalf) = s.into_split();
        Lb {
            r: FrameReader::new(r, FrameCodec::default()),
            w: FrameWriter::new(w),
        }
    }

    async fn send(&mut self, frame: BytesMut) {
        self.w.push(frame.freeze());
        self.w.flush().await.unwrap();
    }

    async fn call(&mut self, method: Method, seqid: i32, ms: u32) {
        let mut b = BytesMut::new();
        wire::put_call(
            &mut b,
            b"",
            method,
            seqid,
            seqid as u64,
            &wire::fill(16),
            16,
            ms,
        );
        self.send(b).await;
    }

    async fn recv(&mut self) -> Message {
        let f = tokio::time::timeout(STEP, self.r.next())
            .await
            .expect("frame in time")
            .expect("connection open")
            .unwrap();
        Message::parse(f).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_echoes_heartbeats_serves_its_pool_in_order_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.sock");
    let l = Listener::bind(&Address::Unix(back.clone())).await.unwrap();
    let mut p = Proc(
        Command::new(SERVER)
            .args(["--worker", back.to_str().unwrap(), "--pool-size", "1"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lb = Lb::accept(&l).await;

    lb.send(rpc_codec::heartbeat(77)).await;
    let hb = lb.recv().await;
    assert_eq!(
        (hb.kind(), hb.seqid(), hb.name()),
        (MessageType::Heartbeat, 77, &b"ping"[..])
    );

    // Pool of one: the echo waits behind the 200 ms sleep.
    let t = Instant::now();
    lb.call(Method::Sleep, 1, 200).await;
    lb.call(Method::Echo, 2, 0).await;
    let first = lb.recv().await;
    let second = lb.recv().await;
    assert_eq!((first.seqid(), first.name()), (1, &b"sleep"[..]));
    assert_eq!((second.seqid(), second.name()), (2, &b"echo"[..]));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(wire::reply_matches(second.body(), 2, &wire::fill(16), 16));

    // SIGTERM: STOP first, in-flight calls still answered, exit once
    // confirmed and idle.
    lb.call(Method::Sleep, 3, 100).await;
    p.signal(libc::SIGTERM);
    let stop = lb.recv().await;
    assert_eq!(stop.kind(), MessageType::Stop);
    lb.send(rpc_codec::stop_confirm()).await;
    let last = lb.recv().await;
    assert_eq!((last.kind(), last.seqid()), (MessageType::Reply, 3));
    let status = p.wait_exit(STEP);
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_redials_after_missing_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.sock");
    let l = Listener::bind(&Address::Unix(back.clone())).await.unwrap();
    let _p = Proc(
        Command::new(SERVER)
            .args([
                "--worker",
                back.to_str().unwrap(),
                "--heartbeat-timeout",
                "0.3",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut first = Lb::accept(&l).await;
    // No heartbeat: the worker closes and dials again (after its 1 s backoff).
    let t = Instant::now();
    assert!(tokio::time::timeout(STEP, first.r.next())
        .await
        .unwrap()
        .is_none());
    assert!(t.elapsed() >= Duration::from_millis(250));
    let mut second = Lb::accept(&l).await;
    second.call(Method::Echo, 9, 0).await;
    assert_eq!(second.recv().await.seqid(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_started_by_a_supervising_lb_dials_the_address_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let back = dir.path().join("back.sock");
    let l = Listener::bind(&Address::Unix(back.clone())).await.unwrap();
    let _p = Proc(
        Command::new(SERVER)
            .env("RPC_BACK_ADDRESS", &back)
            .env("RPC_WORKER_POOL_SIZE", "2")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lb = Lb::accept(&l).await;
    // Two slots: the echo is answered while the long sleep holds the other.
    lb.call(Method::Sleep, 1, 60_000).await;
    lb.call(Method::Echo, 2, 0).await;
    let first = lb.recv().await;
    assert_eq!((first.seqid(), first.name()), (2, &b"echo"[..]));
}
