//! `rpc-lb` supervising its workers (`worker_command`), as deployed: the
//! binary with a config.ini, real worker processes (`rpc-bench-server`, the
//! Rust SDK's worker, which finds the LB in `RPC_BACK_ADDRESS`), load from
//! raw clients on the frontend, and the status page read over HTTP. Every
//! wait is on a condition, bounded.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bench_server;
use futures::SinkExt;
use rpc_codec::{encode_message, read_application_exception, Message, MessageType};
use rpc_testkit::{free_port, http_get, Peer, STEP};
use rpc_transport::Address;
use serde_json::Value;
use tokio::time::Instant;

/// Long enough for anything that waits on a whole round of replacements.
const ROUND: Duration = Duration::from_secs(30);

/// A `sleep` call's arguments (`{1: binary data, 2: i32 ms}`), as the bench
/// service reads them.
fn sleep_args(ms: i32) -> Vec<u8> {
    let mut b = vec![11, 0, 1, 0, 0, 0, 1, b'x'];
    b.extend_from_slice(&[8, 0, 2]);
    b.extend_from_slice(&ms.to_be_bytes());
    b.push(0);
    b
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

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: signals a process (or group) this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Waits until `cond` holds for the LB's `/status`, at most `limit`.
async fn status_until(
    page: SocketAddr,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let every = Duration::from_millis(10);
    rpc_testkit::read_until(what, limit, every, || status(page), cond).await
}

async fn status(page: SocketAddr) -> Value {
    serde_json::from_str(&http_get(page, "/status").await).expect("/status is JSON")
}

/// The supervised workers' pids, slot by slot (`None` while restarting).
fn supervised(s: &Value) -> Vec<Option<u32>> {
    s["supervised"]
        .as_array()
        .expect("supervised workers listed")
        .iter()
        .map(|v| v["pid"].as_u64().map(|p| p as u32))
        .collect()
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

/// Every slot has a worker and each of them serves.
fn all_serving(s: &Value, count: usize) -> bool {
    let pids = supervised(s);
    let live = serving(s);
    pids.len() == count && pids.iter().all(|p| p.is_some_and(|p| live.contains(&p)))
}

/// An `rpc-lb` process supervising `count` bench workers, with its status
/// page; killed with its workers if a test fails half-way.
struct Lb {
    dir: tempfile::TempDir,
    child: std::process::Child,
    front: Address,
    page: SocketAddr,
    count: usize,
}

impl Lb {
    /// `extra`: more config.ini lines (they override the ones before).
    async fn start(count: usize, extra: &str) -> Lb {
        let worker = format!("'{}' --sleep-ms 1", bench_server().display());
        Lb::start_with(count, &worker, "", extra).await
    }

    /// With this `worker_command` and `back_address` (empty: a Unix socket).
    async fn start_with(count: usize, worker: &str, back: &str, extra: &str) -> Lb {
        let dir = tempfile::tempdir().unwrap();
        let (port, page) = (free_port(), free_port());
        let back = match back {
            "" => dir.path().join("workers.sock").display().to_string(),
            b => b.to_string(),
        };
        let ini = dir.path().join("lb.ini");
        std::fs::write(
            &ini,
            format!(
                "zk = local:{registry}\nproduct = test\nservice = sup\n\
                 front_host = 127.0.0.1\nfront_port = {port}\nback_address = {back}\n\
                 worker_pool_size = 2\nmetrics_address = 127.0.0.1:{page}\n\
                 register_delay = 0\nquiet_period = 0.2\nstop_timeout = 5\n\
                 worker_command = {worker}\nworker_count = {count}\n{extra}\n",
                registry = dir.path().join("registry").display(),
            ),
        )
        .unwrap();
        let out = std::fs::File::create(dir.path().join("output")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rpc-lb"))
            .arg("-c")
            .arg(&ini)
            .arg("-L")
            .arg(dir.path().join("lb.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // As a shell starts a job: a group of its own, which a
            // terminal's Ctrl-C would signal as a whole.
            .process_group(0)
            .spawn()
            .unwrap();
        let lb = Lb {
            dir,
            child,
            front: Address::Tcp(format!("127.0.0.1:{port}")),
            page: format!("127.0.0.1:{page}").parse().unwrap(),
            count,
        };
        lb.wait_http().await;
        lb
    }

    async fn wait_http(&self) {
        let deadline = Instant::now() + STEP;
        while tokio::net::TcpStream::connect(self.page).await.is_err() {
            assert!(Instant::now() < deadline, "no status page: {}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every slot's worker serves; their pids.
    async fn serving(&self) -> Vec<u32> {
        let n = self.count;
        let s = status_until(self.page, "every supervised worker serving", ROUND, |s| {
            all_serving(s, n)
        })
        .await;
        supervised(&s).into_iter().flatten().collect()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// What the LB logged so far (the log file is rolled daily: every file).
    fn log(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("lb.log") || n == "output")
            })
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits for the LB to exit by itself.
    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "LB did not exit: {}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in children_of(self.child.id()) {
                // SAFETY: a worker this LB (our child) started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- LB log ---\n{}", self.log());
        }
    }
}

/// Clients calling `sleep` on the LB's frontend, one call at a time per
/// connection, counting replies and keeping the failures' texts.
struct Load {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(front: &Address, connections: usize, ms: i32) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|_| {
                let (front, ok, failures, stop) =
                    (front.clone(), ok.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut peer = Peer::connect(&front).await;
                    let args = sleep_args(ms);
                    let mut seqid = 0;
                    while !stop.load(Ordering::Relaxed) {
                        seqid += 1;
                        let call = encode_message(MessageType::Call, b"sup:sleep", seqid, &args);
                        if peer.io.send(call.freeze()).await.is_err() {
                            break;
                        }
                        let Some(m) = peer.recv().await else { break };
                        match (m.kind(), m.seqid() == seqid) {
                            (MessageType::Reply, true) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => failures.lock().unwrap().push(describe(&m)),
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    /// Waits until `n` more calls succeeded.
    async fn progress(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + ROUND;
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "load stalled: {:?}",
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Stops the clients after their call in flight; the failures.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn describe(m: &Message) -> String {
    match m.kind() {
        MessageType::Exception => read_application_exception(m.body())
            .map(|e| e.message)
            .unwrap_or_else(|_| "unreadable exception".into()),
        k => format!("{k:?} seqid {}", m.seqid()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_restarted_and_only_its_calls_in_flight_fail() {
    let lb = Lb::start(2, "").await;
    let first = lb.serving().await;
    let load = Load::start(&lb.front, 4, 20);
    load.progress(100).await;

    let victim = first[0];
    signal(victim as i32, libc::SIGKILL);
    let killed = Instant::now();
    let s = status_until(lb.page, "a replacement serving", STEP, |s| {
        all_serving(s, 2) && !supervised(s).contains(&Some(victim))
    })
    .await;
    let replaced_in = killed.elapsed();
    let new = supervised(&s)[0].unwrap();
    assert!(
        replaced_in < Duration::from_secs(2),
        "replacement after {replaced_in:?}"
    );
    // The replacement takes calls.
    status_until(lb.page, "the replacement serving calls", STEP, |s| {
        s["supervised"][0]["served"].as_u64() > Some(0)
    })
    .await;
    load.progress(100).await;
    let (ok, failures) = load.finish().await;

    // Pool size 2: at most the two calls the victim had.
    assert!(failures.len() <= 2, "{failures:?}");
    for f in &failures {
        assert!(f.contains("lost"), "only lost calls fail: {f}");
    }
    assert!(ok >= 200);
    let slot = &status(lb.page).await["supervised"][0];
    assert_eq!(
        (slot["restarts"].as_u64(), slot["pid"].as_u64()),
        (Some(1), Some(new.into()))
    );
    assert_eq!(slot["last_exit"], "killed by signal 9 (SIGKILL)");
    assert!(
        lb.log().contains(&format!(
            "worker {victim} exited (killed by signal 9 (SIGKILL))"
        )),
        "{}",
        lb.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_recycled_after_max_requests_without_a_failed_call() {
    let lb = Lb::start(2, "worker_max_requests = 50").await;
    let first = lb.serving().await;
    let load = Load::start(&lb.front, 4, 1);
    let s = status_until(lb.page, "both workers recycled", ROUND, |s| {
        all_serving(s, 2)
            && supervised(s)
                .iter()
                .all(|p| !first.contains(&p.unwrap_or(0)))
    })
    .await;
    load.progress(100).await;
    let (_, failures) = load.finish().await;

    assert_eq!(failures, Vec::<String>::new());
    for slot in s["supervised"].as_array().unwrap() {
        assert!(slot["replaced"].as_u64() >= Some(1), "{slot}");
        assert_eq!(slot["restarts"], 0, "{slot}");
    }
    for pid in first {
        assert!(!alive(pid), "old worker {pid} still running");
    }
    let log = lb.log();
    let reached: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("reached worker_max_requests"))
        .filter_map(|l| {
            l.split("served=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !reached.is_empty() && reached.iter().all(|&n| n >= 50),
        "{reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_worker_new_before_old_without_a_failed_call() {
    let lb = Lb::start(3, "").await;
    let first = lb.serving().await;
    let load = Load::start(&lb.front, 4, 5);
    load.progress(100).await;

    lb.signal(libc::SIGHUP);
    // New before old: three workers take requests at every moment.
    let deadline = Instant::now() + ROUND;
    loop {
        let s = status(lb.page).await;
        assert!(
            serving(&s).len() >= 3,
            "fewer than 3 workers serving: {s:#}"
        );
        let pids = supervised(&s);
        if all_serving(&s, 3) && pids.iter().all(|p| !first.contains(&p.unwrap_or(0))) {
            break;
        }
        assert!(Instant::now() < deadline, "reload did not finish: {s:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    load.progress(100).await;
    let (_, failures) = load.finish().await;

    assert_eq!(failures, Vec::<String>::new());
    for pid in first {
        assert!(!alive(pid), "old worker {pid} still running");
    }
    let s = status(lb.page).await;
    for slot in s["supervised"].as_array().unwrap() {
        assert_eq!(
            (slot["replaced"].as_u64(), slot["restarts"].as_u64()),
            (Some(1), Some(0))
        );
    }
    assert!(lb.log().contains("reload done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_workers_after_the_lbs_own_drain() {
    let mut lb = Lb::start(2, "").await;
    let pids = lb.serving().await;
    status_until(lb.page, "registered", STEP, |s| s["registered"] == true).await;
    let mut c = Peer::connect(&lb.front).await;
    // In flight while the LB stops: a worker must still be there to answer.
    c.send(MessageType::Call, "sup:sleep", 1, &sleep_args(500))
        .await;
    status_until(lb.page, "the call in flight", STEP, |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["inflight"] == 1)
    })
    .await;
    lb.signal(libc::SIGTERM);
    let reply = c.recv().await.expect("answered");
    assert_eq!(reply.kind(), MessageType::Reply, "{}", describe(&reply));
    let status = lb.exit(STEP * 2).await;
    assert!(status.success(), "{status:?}");
    for pid in &pids {
        assert!(!alive(*pid), "worker {pid} outlived the LB");
    }
    let log = lb.log();
    for pid in pids {
        assert!(
            log.lines().any(|l| l.contains("worker stopped")
                && l.contains(&format!("pid={pid}"))
                && l.contains("exit code 0")),
            "worker {pid} not stopped gracefully: {log}"
        );
    }
    assert!(log.contains("supervised workers stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_reaches_the_lb_alone_which_serves_its_quiet_period_then_stops_the_workers() {
    let mut lb = Lb::start(2, "quiet_period = 3").await;
    let pids = lb.serving().await;
    status_until(lb.page, "registered", STEP, |s| s["registered"] == true).await;
    let mut c = Peer::connect(&lb.front).await;
    assert_eq!(
        c.call("sup:sleep", 1, &sleep_args(1)).await.kind(),
        MessageType::Reply
    );
    // What a terminal does on Ctrl-C: SIGINT to the foreground group.
    signal(-lb.pid(), libc::SIGINT);
    status_until(lb.page, "the LB stopping", STEP, |s| {
        s["registered"] == false
    })
    .await;
    // Time for workers that got the signal too to announce their STOP.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Within its quiet period the LB still serves, with every worker.
    let s = status(lb.page).await;
    assert!(
        all_serving(&s, 2),
        "workers stopped before the LB drained: {s:#}"
    );
    let m = c.call("sup:sleep", 2, &sleep_args(1)).await;
    assert_eq!(m.kind(), MessageType::Reply, "{}", describe(&m));
    let status = lb.exit(STEP * 2).await;
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the LB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_outlives_a_killed_lb() {
    let mut lb = Lb::start(2, "").await;
    let pids = lb.serving().await;
    lb.signal(libc::SIGKILL);
    lb.exit(STEP).await;
    let deadline = Instant::now() + STEP;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived the LB: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_and_metrics_show_each_workers_pid_age_calls_and_restarts() {
    let lb = Lb::start(2, "").await;
    let pids = lb.serving().await;
    // A worker that dialled in by itself is served as ever, and not listed
    // among the supervised ones.
    let sock = lb.dir().join("workers.sock");
    let mut own = Command::new(bench_server())
        .arg("--worker")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let own_pid = own.id();
    status_until(lb.page, "the worker of its own", STEP, |s| {
        serving(s).contains(&own_pid)
    })
    .await;

    let mut c = Peer::connect(&lb.front).await;
    for i in 0..30 {
        assert_eq!(
            c.call("sup:sleep", i, &sleep_args(0)).await.kind(),
            MessageType::Reply
        );
    }
    let s = status(lb.page).await;
    let slots = s["supervised"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    let mut served = 0;
    for (slot, pid) in slots.iter().zip(&pids) {
        assert_eq!(slot["pid"].as_u64(), Some(u64::from(*pid)));
        assert!(slot["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{slot}");
        assert_eq!(
            (slot["restarts"].as_u64(), slot["replaced"].as_u64()),
            (Some(0), Some(0))
        );
        served += slot["served"].as_u64().unwrap();
    }
    let own_served: u64 = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["pid"].as_u64() == Some(own_pid.into()))
        .map(|w| w["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served + own_served, 30, "{s:#}");

    let metrics = http_get(lb.page, "/metrics").await;
    for (slot, pid) in pids.iter().enumerate() {
        let labels = format!("{{slot=\"{slot}\",pid=\"{pid}\"}}");
        for name in [
            "rpc_lb_supervised_worker_age_seconds",
            "rpc_lb_supervised_worker_served_total",
            "rpc_lb_supervised_worker_restarts_total",
        ] {
            assert!(
                metrics.contains(&format!("{name}{labels} ")),
                "{name}{labels} missing:\n{metrics}"
            );
        }
    }
    let dashboard = http_get(lb.page, "/").await;
    for pid in &pids {
        assert!(
            dashboard.contains(&format!("<td>{pid}</td>")),
            "{dashboard}"
        );
    }

    // A restart shows.
    signal(pids[1] as i32, libc::SIGKILL);
    let s = status_until(lb.page, "the restart counted", STEP, |s| {
        s["supervised"][1]["restarts"] == 1 && all_serving(s, 2)
    })
    .await;
    let new = supervised(&s)[1].unwrap();
    let metrics = http_get(lb.page, "/metrics").await;
    let line = format!("rpc_lb_supervised_worker_restarts_total{{slot=\"1\",pid=\"{new}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} missing:\n{metrics}"
    );
    let _ = own.kill();
    let _ = own.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tcp_back_address_workers_are_known_by_pid_and_reloaded() {
    let worker = format!("'{}'", bench_server().display());
    let back = format!("127.0.0.1:{}", free_port());
    let lb = Lb::start_with(2, &worker, &back, "").await;
    // Each connection's process found in /proc among the LB's children.
    let first = lb.serving().await;
    let load = Load::start(&lb.front, 2, 1);
    load.progress(50).await;
    lb.signal(libc::SIGHUP);
    status_until(lb.page, "every worker replaced", ROUND, |s| {
        all_serving(s, 2)
            && supervised(s)
                .iter()
                .all(|p| !first.contains(&p.unwrap_or(0)))
    })
    .await;
    load.progress(50).await;
    let (_, failures) = load.finish().await;
    assert_eq!(failures, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_failing_is_restarted_with_growing_delays() {
    let started = Instant::now();
    let lb = Lb::start_with(1, "sh -c 'exit 3'", "", "worker_restart_backoff = 0.1").await;
    status_until(lb.page, "four restarts", STEP, |s| {
        s["supervised"][0]["restarts"].as_u64() >= Some(4)
    })
    .await;
    // 0.1 s, 0.2 s, 0.4 s between the four exits, at least.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let log = lb.log();
    assert!(log.contains("exited (exit code 3)"), "{log}");
    assert!(
        log.contains("restart_in=400ms") || log.contains("restart_in=800ms"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_cannot_start_leaves_the_old_worker_serving_and_is_retried_later() {
    // The first start serves; every later one fails at once.
    let marker = tempfile::tempdir().unwrap();
    let m = marker.path().join("started");
    let worker = format!(
        "sh -c 'if [ -e {m} ]; then exit 4; fi; touch {m}; exec \"$0\" --sleep-ms 1' '{bench}'",
        m = m.display(),
        bench = bench_server().display()
    );
    let lb = Lb::start_with(
        1,
        &worker,
        "",
        "worker_max_requests = 20\nworker_restart_backoff = 0.1",
    )
    .await;
    let first = lb.serving().await;
    let load = Load::start(&lb.front, 2, 1);
    load.progress(50).await;
    // Past its limit, the replacement fails: at 0, 0.1, 0.3, 0.7, 1.5 s...
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    load.progress(50).await;
    let elapsed = watched.elapsed();
    let (_, failures) = load.finish().await;
    assert_eq!(failures, Vec::<String>::new());
    let s = status(lb.page).await;
    assert_eq!(
        supervised(&s),
        vec![Some(first[0])],
        "the old worker kept its slot"
    );
    let tries = lb.log().matches("replacement did not connect").count();
    // Doubling from 0.1 s: n tries take at least 0.1 × (2^(n-1) - 1) s.
    let most = 2 + (elapsed.as_secs_f64() / 0.1 + 1.0).log2().floor() as usize;
    assert!((1..=most).contains(&tries), "{tries} tries in {elapsed:?}");
}
