//! The `rpc-demo` binary as a user runs it: whole demo, service alone,
//! worker alone; real processes, real sockets, the embedded registry.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_registry::Registry;
use rpc_sdk::client::ProxyClient;
use rpc_sdk::gen::echo::{EchoSyncClient, TEchoSyncClient};
use rpc_transport::{Address, FrameReader, Listener, Stream};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_rpc-demo");
const STEP: Duration = Duration::from_secs(10);

/// Waits for `child` to exit, killing it after `limit`.
fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rpc-demo did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on the pid of a child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_whole_demo_runs_once_and_succeeds() {
    let mut child = Command::new(BIN)
        .args(["--once", "--calls", "400", "--threads", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = wait(&mut child, Duration::from_secs(60));
    assert!(status.success(), "demo failed:\n{out}");
    for line in [
        "echo(\"hello\")    -> \"hello\"",
        "add(2, 40)       -> 42",
        "raised EchoError { message: \"boom\" }",
        "delivered (oneway)",
        "burst: 400 echo calls",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_subcommand_registers_serves_through_a_proxy_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.ini");
    std::fs::write(
        &config,
        format!(
            "zk=local:{}\nproduct=test\nservice=echo\nfront_host=127.0.0.1\nfront_port={port}\nquiet_period=0.2\n",
            dir.path().join("registry").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["service", "-c"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");

    // Another process's proxy finds it in the shared registry.
    let registry: Arc<dyn Registry> = Arc::new(
        rpc_registry::local::LocalRegistry::open(&dir.path().join("registry"), "test").unwrap(),
    );
    let mut pc = rpc_config::Config::default();
    pc.set("proxy_address", "127.0.0.1:0").unwrap();
    let proxy = rpc_proxy::start(&pc, registry.clone()).await.unwrap();
    let addr = proxy.addresses()[0].clone();
    tokio::task::spawn_blocking(move || {
        let (i, o) = ProxyClient::connect(&addr, "echo", STEP)
            .unwrap()
            .into_protocols();
        let mut c = EchoSyncClient::new(i, o);
        let deadline = Instant::now() + STEP;
        loop {
            match c.echo("through the proxy".into()) {
                Ok(r) => break assert_eq!(r, "through the proxy"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("never routable: {e}"),
            }
        }
        assert_eq!(c.add(1, 2).unwrap(), 3);
    })
    .await
    .unwrap();

    let mut watch = registry.watch().await.unwrap();
    sigterm(&child);
    let gone = tokio::time::timeout(
        STEP,
        watch.wait_for(|m| m.get("echo").is_none_or(|v| v.is_empty())),
    )
    .await;
    assert!(gone.is_ok(), "deregistered on SIGTERM");
    let status = tokio::task::spawn_blocking(move || wait(&mut child, STEP))
        .await
        .unwrap();
    assert!(status.success());
    proxy.shutdown().await;
}

async fn next(reader: &mut FrameReader) -> Option<Message> {
    let f = tokio::time::timeout(STEP, reader.next())
        .await
        .expect("a frame in time");
    f.map(|f| Message::parse(f.unwrap()).unwrap())
}

/// A Thrift struct `{1: string}` (the arguments of `echo`).
fn echo_args(s: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(11);
    b.put_i16(1);
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
    b.put_u8(0);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_subcommand_dials_the_lb_serves_and_stops_with_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let back: Address = dir
        .path()
        .join("lb.sock")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let lb = Listener::bind(&back).await.unwrap();
    let config = dir.path().join("config.ini");
    std::fs::write(
        &config,
        format!("back_address={back}\nworker_pool_size=2\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["worker", "-c"])
        .arg(&config)
        .spawn()
        .unwrap();

    let stream: Stream = tokio::time::timeout(STEP, lb.accept())
        .await
        .expect("worker dials")
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::default());
    w.write_all(&encode_message(
        MessageType::Call,
        b"echo",
        7,
        &echo_args("via lb"),
    ))
    .await
    .unwrap();
    w.write_all(&rpc_codec::heartbeat(8)).await.unwrap();
    let mut got = [
        next(&mut reader).await.unwrap(),
        next(&mut reader).await.unwrap(),
    ];
    got.sort_by_key(|m| m.seqid());
    assert_eq!((got[0].kind(), got[0].seqid()), (MessageType::Reply, 7));
    assert!(got[0].body().windows(6).any(|x| x == b"via lb"));
    assert_eq!(got[1].kind(), MessageType::Heartbeat);

    sigterm(&child);
    let m = next(&mut reader).await.expect("STOP");
    assert_eq!(m.kind(), MessageType::Stop);
    w.write_all(&rpc_codec::stop_confirm()).await.unwrap();
    assert!(
        next(&mut reader).await.is_none(),
        "worker closes after the confirm"
    );
    let status = tokio::task::spawn_blocking(move || wait(&mut child, STEP))
        .await
        .unwrap();
    assert!(status.success());
}
