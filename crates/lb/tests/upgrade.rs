//! `rpc-lb --upgrade` beside a running LB, under load, as deployed: the
//! binary with a config.ini and the embedded registry, real worker
//! processes (`rpc-bench-server`) on a Unix back address, raw clients on
//! the frontend. The successor takes the sockets and the proxy
//! connections, the workers redial it (or, supervised, the successor starts
//! its own and the old LB stops its), it registers in the old LB's place,
//! and the old LB exits: no call fails, no connection is refused, the
//! endpoint stays registered.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bench_server, echo_args, reply_data, sleep_args};
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, Message, MessageType};
use rpc_registry::local::LocalRegistry;
use rpc_registry::Registry;
use rpc_testkit::{free_port, http_get, Peer};
use rpc_transport::{Address, Stream};
use serde_json::Value;
use tokio::time::Instant;

/// Longest wait for one reply: calls wait in the successor's queue until
/// a worker has redialled (at once, or after a 1 s backoff).
const REPLY_WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    /// The longest a fresh connection's call took, µs.
    slowest_us: AtomicU64,
    stop: AtomicBool,
    /// What the failures were.
    failures: Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.failures.lock().unwrap().push(what);
    }
}

/// Sends `sleep` call `seqid` (1 to 5 ms, its seqid as data).
async fn send_sleep(peer: &mut Peer, seqid: i32) -> bool {
    let body = sleep_args(&seqid.to_be_bytes(), 1 + seqid % 5);
    let frame = encode_message(MessageType::Call, b"up:sleep", seqid, &body);
    peer.io.send(frame.freeze()).await.is_ok()
}

/// A proxy-like client keeping `depth` calls in flight on one connection
/// for the whole test (short sleeps, so calls are always running in the
/// workers); replies come in any order and are matched by seqid and data.
async fn pipelined(front: Address, depth: i32, counts: Arc<Counts>) {
    let mut peer = Peer::new(Stream::connect(&front).await.expect("connects"));
    let mut outstanding = HashSet::new();
    let mut next = 0i32;
    while !counts.stop.load(Ordering::Relaxed) {
        while outstanding.len() < depth as usize {
            if !send_sleep(&mut peer, next).await {
                counts.fail("pipelined connection closed".into());
                return;
            }
            outstanding.insert(next);
            next += 1;
        }
        let m = match tokio::time::timeout(REPLY_WITHIN, peer.io.next()).await {
            Ok(Some(Ok(frame))) => Message::parse(frame).expect("a well-formed reply"),
            Ok(other) => {
                counts.fail(format!("pipelined connection ended: {other:?}"));
                return;
            }
            Err(_) => {
                counts.fail(format!("no reply within {REPLY_WITHIN:?}"));
                return;
            }
        };
        let seqid = m.seqid();
        match reply_data(&m) {
            Some(data) if data == seqid.to_be_bytes() && outstanding.remove(&seqid) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            _ => counts.fail(format!("call {seqid}: {m:?}")),
        }
    }
}

/// A client opening a new connection for each call.
async fn connecting(front: Address, counts: Arc<Counts>) {
    let mut seqid = 0i32;
    while !counts.stop.load(Ordering::Relaxed) {
        seqid += 1;
        let began = Instant::now();
        let Ok(stream) = Stream::connect(&front).await else {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut peer = Peer::new(stream);
        let data = format!("fresh {seqid}");
        let body = echo_args(data.as_bytes());
        if peer
            .io
            .send(encode_message(MessageType::Call, b"up:echo", seqid, &body).freeze())
            .await
            .is_err()
        {
            counts.fail(format!("fresh call {seqid}: not sent"));
            continue;
        }
        match tokio::time::timeout(REPLY_WITHIN, peer.io.next()).await {
            Ok(Some(Ok(frame))) => {
                let m = Message::parse(frame).expect("a well-formed reply");
                if reply_data(&m) == Some(data.as_bytes()) && m.seqid() == seqid {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                    let took = began.elapsed().as_micros() as u64;
                    counts.slowest_us.fetch_max(took, Ordering::Relaxed);
                } else {
                    counts.fail(format!("fresh call {seqid}: {m:?}"));
                }
            }
            other => counts.fail(format!("fresh call {seqid}: {other:?}")),
        }
    }
}

/// A process of this test, killed if the test ends before it does.
struct Proc {
    child: Child,
    what: &'static str,
    output: std::path::PathBuf,
}

impl Proc {
    fn start(cmd: &mut Command, what: &'static str, dir: &Path, name: &str) -> Proc {
        let output = dir.join(name);
        let out = std::fs::File::create(&output).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        Proc {
            child,
            what,
            output,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "{} still running after {within:?}:\n{}",
                self.what,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.what, self.output());
        }
    }
}

async fn status(page: SocketAddr) -> Value {
    serde_json::from_str(&http_get(page, "/status").await).expect("/status is JSON")
}

/// Pids of the worker connections taking requests.
fn serving(s: &Value) -> Vec<u32> {
    s["workers"]
        .as_array()
        .expect("workers listed")
        .iter()
        .filter(|w| w["state"] == "serving")
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// The pids of the supervised workers (`None` while a slot restarts).
fn supervised(s: &Value) -> Vec<Option<u32>> {
    s["supervised"]
        .as_array()
        .expect("supervised workers listed")
        .iter()
        .map(|v| v["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Whether `pid` runs (a zombie, exited and not reaped, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until the LB's `/status` satisfies `cond`, at most 10 s.
async fn status_until(page: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let (limit, every) = (Duration::from_secs(10), Duration::from_millis(20));
    rpc_testkit::read_until(what, limit, every, || status(page), cond).await
}

/// An LB's configuration in a temporary directory, its registry watched.
struct Stack {
    dir: tempfile::TempDir,
    front: Address,
    back: std::path::PathBuf,
    page: SocketAddr,
    ini: std::path::PathBuf,
    view: tokio::sync::watch::Receiver<Arc<rpc_registry::ServiceMap>>,
}

impl Stack {
    /// `extra`: more config.ini lines; `unix`: the frontend on a Unix
    /// socket (else TCP on loopback).
    async fn new(extra: &str, unix: bool) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let registry = dir.path().join("registry");
        let front = if unix {
            Address::Unix(dir.path().join("front.sock"))
        } else {
            Address::Tcp(format!("127.0.0.1:{}", free_port()))
        };
        let front_lines = match &front {
            Address::Unix(path) => format!("front_sock = {}", path.display()),
            Address::Tcp(a) => {
                let (host, port) = a.rsplit_once(':').unwrap();
                format!("front_host = {host}\nfront_port = {port}")
            }
        };
        let back = dir.path().join("workers.sock");
        let page: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ini = dir.path().join("lb.ini");
        std::fs::write(
            &ini,
            format!(
                "zk = local:{}\nproduct = test\nservice = up\n\
                 {front_lines}\nback_address = {}\n\
                 worker_pool_size = 4\nmetrics_address = {page}\n\
                 register_delay = 0\nquiet_period = 0.2\nstop_timeout = 10\n\
                 rpc_timeout = 10\n{extra}\n",
                registry.display(),
                back.display(),
            ),
        )
        .unwrap();
        let view = LocalRegistry::open(&registry, "test")
            .unwrap()
            .watch()
            .await
            .unwrap();
        Stack {
            front,
            dir,
            back,
            page,
            ini,
            view,
        }
    }

    fn lb(&self, upgrade: bool) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpc-lb"));
        cmd.arg("-c")
            .arg(&self.ini)
            .arg("--work-dir")
            .arg(self.dir.path());
        let (what, out) = if upgrade {
            cmd.arg("--upgrade");
            ("the new LB", "new.out")
        } else {
            ("the old LB", "old.out")
        };
        Proc::start(&mut cmd, what, self.dir.path(), out)
    }

    async fn registered(&mut self, lb: &Proc) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.view.wait_for(|m| m.contains_key("up")),
        )
        .await
        .unwrap_or_else(|_| panic!("the LB registers:\n{}", lb.output()))
        .unwrap();
    }

    /// The registry's record, with its owner's pid (embedded registry).
    fn record(&self) -> Value {
        let id = rpc_registry::service_id(&self.front.to_string());
        let entry = self
            .dir
            .path()
            .join(format!("registry/test/services/up/{id}.json"));
        serde_json::from_slice(&std::fs::read(entry).unwrap()).unwrap()
    }
}

/// Pipelined and connect-per-call clients on the frontend.
struct Load {
    counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(front: &Address) -> Load {
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(pipelined(front.clone(), 6, counts.clone())));
        }
        for _ in 0..2 {
            tasks.push(tokio::spawn(connecting(front.clone(), counts.clone())));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(counts.ok.load(Ordering::Relaxed) > 0, "load runs");
        Load { counts, tasks }
    }

    fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; calls answered, failed, refused, and the
    /// slowest call of a fresh connection.
    async fn stop(self, new: &Proc) -> (u64, u64, u64, Duration) {
        self.counts.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(REPLY_WITHIN, t)
                .await
                .expect("load stops")
                .expect("a client task ends normally");
        }
        let c = &self.counts;
        let numbers = (
            c.ok.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed),
        );
        let failures = c.failures.lock().unwrap().clone();
        assert_eq!(
            (numbers.1, numbers.2),
            (0, 0),
            "{} calls answered; failures: {failures:?}\n--- new LB ---\n{}",
            numbers.0,
            new.output()
        );
        let slowest = Duration::from_micros(c.slowest_us.load(Ordering::Relaxed));
        (numbers.0, numbers.1, numbers.2, slowest)
    }
}

/// Starts the successor beside `old` and waits for `old` to exit; when
/// it did, and the calls answered by then.
async fn upgrade(stack: &Stack, old: &mut Proc, load: &Load) -> (Proc, Duration, u64) {
    let at = Instant::now();
    let new = stack.lb(true);
    let status = old.exit(Duration::from_secs(20)).await;
    let took = at.elapsed();
    assert!(
        status.success(),
        "the old LB exits cleanly: {status}\n{}",
        old.output()
    );
    let log = old.output();
    assert!(
        !log.contains("worker lost") && !log.contains("LB deregistered"),
        "the old LB neither lost a worker nor deregistered:\n{log}"
    );
    // The old LB left the socket paths to the successor.
    assert!(stack.back.exists(), "the worker socket's path stays");
    if let Address::Unix(front) = &stack.front {
        assert!(front.exists(), "the frontend's path stays");
    }
    // The successor holds the entry now.
    let record = stack.record();
    assert_eq!(record["pid"], new.pid(), "the successor's entry: {record}");
    (new, took, load.ok())
}

/// The successor stops like any LB: out of the registry, then gone.
async fn stop(stack: &mut Stack, mut new: Proc) {
    // SAFETY: signals the process this test started.
    unsafe { libc::kill(new.pid() as i32, libc::SIGTERM) };
    let status = new.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "the successor stops cleanly: {status}");
    tokio::time::timeout(
        Duration::from_secs(5),
        stack.view.wait_for(|m| !m.contains_key("up")),
    )
    .await
    .expect("the successor deregisters")
    .unwrap();
    // Its paths are its own: they go with it.
    assert!(!stack.back.exists(), "the worker socket's path is removed");
    if let Address::Unix(front) = &stack.front {
        assert!(!front.exists(), "the frontend's path is removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_call_refuses_no_connection_and_stays_registered() {
    let started = Instant::now();
    let mut stack = Stack::new("", false).await;
    let mut old = stack.lb(false);
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut cmd = Command::new(bench_server());
            cmd.arg("--worker")
                .arg(&stack.back)
                .args(["--pool-size", "4"]);
            Proc::start(&mut cmd, "a worker", stack.dir.path(), &format!("w{i}.out"))
        })
        .collect();
    let worker_pids: HashSet<u32> = workers.iter().map(Proc::pid).collect();
    stack.registered(&old).await;
    status_until(stack.page, "both workers connected", |s| {
        serving(s).len() == 2
    })
    .await;

    let load = Load::start(&stack.front).await;
    let (new, took, at_exit) = upgrade(&stack, &mut old, &load).await;
    // Both workers redial and serve the successor (the status page's
    // socket is its own now).
    let s = status_until(stack.page, "the workers on the new LB", |s| {
        serving(s).into_iter().collect::<HashSet<_>>() == worker_pids
    })
    .await;
    assert_eq!(s["registered"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, refused, slowest) = load.stop(&new).await;
    eprintln!(
        "lb upgrade under load (workers dialling in): {ok} calls answered ({at_exit} when the \
         old LB exited, {:.1} s after the upgrade began), {failed} failed, {refused} refused, \
         slowest fresh call {slowest:?}",
        took.as_secs_f64()
    );
    assert!(
        ok > at_exit,
        "calls flow through the successor ({at_exit} → {ok})"
    );
    let m = stack.view.borrow().clone();
    assert_eq!(m["up"].len(), 1, "still registered: {m:?}");
    assert_eq!(m["up"][0].frontend, stack.front.to_string());

    stop(&mut stack, new).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_of_an_lb_supervising_its_workers_replaces_them_without_failing_a_call() {
    let started = Instant::now();
    let worker = format!("'{}' --sleep-ms 1", bench_server().display());
    // The frontend on a Unix socket too: its path stays the successor's.
    let extra = format!("worker_command = {worker}\nworker_count = 2");
    let mut stack = Stack::new(&extra, true).await;
    let mut old = stack.lb(false);
    stack.registered(&old).await;
    let s = status_until(stack.page, "both supervised workers serving", |s| {
        let pids = supervised(s);
        pids.len() == 2
            && pids
                .iter()
                .all(|p| p.is_some_and(|p| serving(s).contains(&p)))
    })
    .await;
    let old_workers: Vec<u32> = supervised(&s).into_iter().flatten().collect();

    let load = Load::start(&stack.front).await;
    let (new, took, at_exit) = upgrade(&stack, &mut old, &load).await;
    // The old LB stopped its workers; the successor's serve.
    assert!(
        old_workers.iter().all(|&p| !alive(p)),
        "the old LB's workers are gone"
    );
    let s = status_until(stack.page, "the new LB's workers serving", |s| {
        let pids = supervised(s);
        let live = serving(s);
        pids.len() == 2
            && pids.iter().all(|p| p.is_some_and(|p| live.contains(&p)))
            && live.len() == 2
    })
    .await;
    let new_workers: Vec<u32> = supervised(&s).into_iter().flatten().collect();
    assert!(new_workers.iter().all(|p| !old_workers.contains(p)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, refused, slowest) = load.stop(&new).await;
    eprintln!(
        "lb upgrade under load (supervised workers): {ok} calls answered ({at_exit} when the \
         old LB exited, {:.1} s after the upgrade began), {failed} failed, {refused} refused, \
         slowest fresh call {slowest:?}",
        took.as_secs_f64()
    );
    assert!(
        ok > at_exit,
        "calls flow through the successor ({at_exit} → {ok})"
    );

    stop(&mut stack, new).await;
    let until = Instant::now() + Duration::from_secs(5);
    while new_workers.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < until,
            "the successor's workers stop with it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
