//! Real sockets on loopback: a raw framed client, a worker written from
//! SPEC §5 alone, and an in-memory registry.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_transport::{Address, Stream};
use tokio::sync::{mpsc, Semaphore};

pub use rpc_testkit::{eventually, exception_text, MemRegistry, Peer as Client, STEP};

pub use rpc_testkit::worker::{TestWorker, WorkerState};

// === Registry ===

/// An LB config on loopback ports chosen by the kernel; `extra` holds
/// config.ini lines that override the defaults.
pub fn lb_config(extra: &str) -> Config {
    let mut c = Config::parse(&format!(
        "service=echo\nfront_host=127.0.0.1\nfront_port=0\nback_address=127.0.0.1:0\n\
         register_delay=0\nquiet_period=0\n{extra}"
    ))
    .unwrap();
    c.stop_timeout = STEP;
    c
}

pub async fn start_lb(extra: &str) -> (rpc_lb::LbHandle, MemRegistry) {
    let reg = MemRegistry::new();
    let lb = rpc_lb::start(&lb_config(extra), Arc::new(reg.clone()))
        .await
        .expect("LB starts");
    (lb, reg)
}

/// Connects workers one by one, each counted by the LB before the next.
pub async fn workers(lb: &rpc_lb::LbHandle, tags: &[&str], pool_size: usize) -> Vec<TestWorker> {
    let mut out = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        out.push(TestWorker::connect(lb.back_address(), tag, pool_size).await);
        eventually("worker counted", || lb.stats().workers == i + 1).await;
    }
    out
}

// === Worker processes ===

/// `echo(1: data)` arguments, as the bench service reads them.
pub fn echo_args(data: &[u8]) -> Vec<u8> {
    let mut b = vec![11, 0, 1];
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b.push(0);
    b
}

/// `sleep(1: data, 2: ms)` arguments.
pub fn sleep_args(data: &[u8], ms: i32) -> Vec<u8> {
    let mut b = echo_args(data);
    b.pop();
    b.extend_from_slice(&[8, 0, 2]);
    b.extend_from_slice(&ms.to_be_bytes());
    b.push(0);
    b
}

/// The `data` of a reply `{0: data}`.
pub fn reply_data(m: &Message) -> Option<&[u8]> {
    let b = m.body();
    if m.kind() != MessageType::Reply || b.len() < 8 || b[0] != 11 {
        return None;
    }
    let n = u32::from_be_bytes(b[3..7].try_into().ok()?) as usize;
    b.get(7..7 + n)
}

/// `rpc-bench-server`, built on demand when only this package was built.
pub fn bench_server() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rpc-lb"));
            let path = exe.with_file_name("rpc-bench-server");
            if !path.exists() {
                // `cargo test -p rpc-lb` builds this package's binaries only.
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = std::process::Command::new(cargo);
                build.args(["build", "-p", "rpc-bench", "--bin", "rpc-bench-server"]);
                if exe.parent().is_some_and(|d| d.ends_with("release")) {
                    build.arg("--release");
                }
                let ok = build.status().is_ok_and(|s| s.success());
                assert!(ok && path.exists(), "cannot build {}", path.display());
            }
            path
        })
        .clone()
}
