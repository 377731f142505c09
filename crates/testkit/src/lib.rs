//! Test-only helpers shared by the workspace's integration tests: a raw
//! framed [`Peer`], an in-memory [`MemRegistry`], bounded waits, and a
//! throwaway ZooKeeper.
//!
//! [`ZkServer`] runs a real, throwaway ZooKeeper (Debian's `zookeeper`
//! package) on a free loopback port with a temporary data directory. It can
//! be stopped and restarted on the same port and data to test what clients
//! do while ZooKeeper is away.

pub mod endpoint;
pub mod logs;
mod memory;
#[cfg(feature = "otlp")]
pub mod otlp;
mod peer;
pub mod tls;
pub mod worker;

pub use memory::MemRegistry;
pub use peer::{exception_text, Peer};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package puts the server and its configuration; a
/// different install can be named with `ZOOKEEPER_CLASSPATH`.
const DEBIAN_CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf";

/// Upper bound for any single expected event in a test.
pub const STEP: Duration = Duration::from_secs(5);

/// Polls `cond` every 10 ms until it holds, failing the test with `what`
/// after [`STEP`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads with `read` every `every` until the value satisfies `cond` and
/// returns it; after `limit`, fails the test with `what` and the last value.
pub async fn read_until<T: std::fmt::Display, F: std::future::Future<Output = T>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut read: impl FnMut() -> F,
    cond: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = read().await;
        if cond(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} ({limit:?}): {value:#}"
        );
        tokio::time::sleep(every).await;
    }
}

/// The body of a `GET path` to an HTTP/1.1 server on `addr`, which must
/// answer 200 within [`STEP`].
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut out = String::new();
    tokio::time::timeout(STEP, s.read_to_string(&mut out))
        .await
        .expect("response in time")
        .expect("read response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.find("\r\n\r\n").expect("headers end") + 4;
    out.split_off(body)
}

/// A free TCP port on 127.0.0.1 (bound then released, so it is free now).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `cond` every 10 ms until it holds, panicking with `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A binary of this workspace, built next to the running test
/// (`target/<profile>/<name>`). `cargo test` builds the binaries of the
/// package under test; others must have been built (`cargo build`).
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A ZooKeeper server for one test. Killed when dropped.
pub struct ZkServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ZkServer {
    /// Starts a server on a free loopback port and waits until it answers
    /// `ruok` (about a second).
    pub fn start() -> ZkServer {
        let dir = tempfile::Builder::new()
            .prefix("rpc-zk-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        // A short tick lets tests see session expiry in seconds: sessions
        // may be as short as 2 ticks.
        let cfg = format!(
            "tickTime=200\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             minSessionTimeout=400\n\
             maxSessionTimeout=60000\n\
             4lw.commands.whitelist=ruok,srvr\n",
            data = dir.path().join("data").display(),
        );
        std::fs::write(dir.path().join("zoo.cfg"), cfg).expect("zoo.cfg");
        let mut zk = ZkServer {
            port,
            dir,
            child: None,
        };
        zk.spawn();
        zk
    }

    /// `host:port` for clients (the `zk` config key).
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (as a crash would: sessions are not closed).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let classpath =
            std::env::var("ZOOKEEPER_CLASSPATH").unwrap_or_else(|_| DEBIAN_CLASSPATH.to_string());
        let log = std::fs::File::create(self.dir.path().join("zookeeper.log")).expect("log file");
        let child = Command::new("java")
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .args(["-Dzookeeper.admin.enableServer=false", "-cp", &classpath])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper: is Java and Debian's zookeeper package installed?");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ruok(self.port) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ZooKeeper exited with {status}: {}",
                    tail(&self.dir.path().join("zookeeper.log"))
                );
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not answer within 30 s: {}",
                tail(&self.dir.path().join("zookeeper.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ruok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut out = String::new();
    s.write_all(b"ruok").is_ok() && s.read_to_string(&mut out).is_ok() && out == "imok"
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zookeeper_starts_stops_and_restarts_on_the_same_port() {
        let mut zk = ZkServer::start();
        assert!(ruok(zk.port()));
        zk.stop();
        assert!(!ruok(zk.port()));
        zk.restart();
        assert!(ruok(zk.port()));
    }
}
