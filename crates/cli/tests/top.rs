//! `rpcctl top --once` (what it prints when standard output is not a
//! terminal) against a real proxy and a real LB with traffic going
//! through them: rates, errors and p99 per service and method, and the
//! endpoints as the proxy sees them, the LB's filled with its traffic.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod stack;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{rows_with, rpcctl};
use rpc_codec::MessageType;
use rpc_registry::Registry;
use rpc_testkit::endpoint::TestEndpoint;
use rpc_testkit::{cargo_bin, eventually, free_port, Peer};
use stack::Stack;

/// The benchmark service's `echo` arguments: `{1: binary "ping"}`.
const BENCH_ARGS: &[u8] = &[11, 0, 1, 0, 0, 0, 4, b'p', b'i', b'n', b'g', 0];

/// Callers through the proxy, one per name, each calling in a loop (a
/// short pause between calls) until stopped.
struct Load {
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(
        proxy: &rpc_transport::Address,
        calls: &[(&'static str, &'static [u8])],
    ) -> Load {
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for &(name, body) in calls {
            let mut peer = Peer::connect(proxy).await;
            let (answered, stop) = (answered.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut seqid = 0;
                while !stop.load(Ordering::SeqCst) {
                    seqid += 1;
                    let reply = peer.call(name, seqid, body).await;
                    assert!(
                        matches!(reply.kind(), MessageType::Reply | MessageType::Exception),
                        "{name}: {reply:?}"
                    );
                    answered.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Load {
            answered,
            stop,
            tasks,
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a caller panicked");
        }
    }
}

/// The cells of a table line (columns are two spaces or more apart).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The one line of `table` whose leading cells are `leading`.
fn row<'a>(table: &'a str, leading: &[&str]) -> Vec<&'a str> {
    let found: Vec<Vec<&str>> = rows_with(table, leading)
        .into_iter()
        .map(cells)
        .filter(|c| c.starts_with(leading))
        .collect();
    assert_eq!(found.len(), 1, "one row {leading:?} in:\n{table}");
    found.into_iter().next().unwrap()
}

fn number(cell: &str) -> f64 {
    cell.trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

#[tokio::test]
async fn top_once_shows_traffic_per_service_method_and_endpoint() {
    let mut stack = Stack::start("").await;
    // echo: a scripted endpoint (unknown methods get an exception).
    let echo = TestEndpoint::start("a").await;
    let _echo = stack
        .registry
        .register(echo.endpoint("echo"))
        .await
        .unwrap();
    // bench: an LB supervising one benchmark worker.
    let (front, lb_page) = (free_port(), free_port());
    let worker = cargo_bin("rpc-bench-server");
    let ini = stack.ini(
        "lb.ini",
        &format!(
            "service = bench\nfront_host = 127.0.0.1\nfront_port = {front}\n\
             back_address = {}\nmetrics_address = 127.0.0.1:{lb_page}\n\
             register_delay = 0\nquiet_period = 0\nworker_count = 1\n\
             worker_command = '{}'",
            stack.dir.path().join("workers.sock").display(),
            worker.display()
        ),
    );
    stack.spawn("rpc-lb", &["-c", ini.to_str().unwrap()]);
    let echo_at = stack.routes("echo").await;
    let bench_at = stack.routes("bench").await;
    assert_eq!(bench_at, format!("127.0.0.1:{front}"));

    let proxy = stack.proxy.addresses()[0].clone();
    let load = Load::start(
        &proxy,
        &[
            ("echo:echo", b"payload"),
            ("echo:echo", b"payload"),
            ("echo:nosuch", b""),
            ("bench:echo", BENCH_ARGS),
        ],
    )
    .await;
    let answered = load.answered.clone();
    eventually("calls answered", || answered.load(Ordering::SeqCst) > 20).await;
    let pages = format!("{},127.0.0.1:{lb_page}", stack.page);
    let run = rpcctl(&["top", "--once", "--status", &pages, "--interval-ms", "500"]).await;
    load.finish().await;
    assert!(run.ok, "{}\n{}", run.stderr, stack.output());
    let out = run.stdout;
    let (proxy_page, lb_page) = (stack.page.to_string(), format!("127.0.0.1:{lb_page}"));
    let (proxy_page, lb_page) = (proxy_page.as_str(), lb_page.as_str());

    // The pages.
    let p = row(&out, &[proxy_page, "proxy"]);
    assert!(p[2].starts_with("proxy: "), "{out}");
    let l = row(&out, &[lb_page, "lb"]);
    assert!(l[2].starts_with("LB of bench: registered"), "{out}");

    // Per service and method, as the proxy counts them: the scripted
    // endpoint's unknown method fails every time.
    let header = ["REQ/S", "ERR/S", "ERR%", "P99(ms)"];
    assert!(out.contains(&header.join("  ")), "{out}");
    let echo_all = row(&out, &["echo", "*", proxy_page, "proxy"]);
    assert!(number(echo_all[4]) > 0.0, "{out}");
    assert!(number(echo_all[5]) > 0.0, "{out}");
    let share = number(echo_all[6]);
    assert!(share > 0.0 && share < 100.0, "{out}");
    let echo_echo = row(&out, &["echo", "echo", proxy_page, "proxy"]);
    assert!(number(echo_echo[4]) > number(echo_echo[5]), "{out}");
    assert_eq!(echo_echo[6], "0.0%", "{out}");
    assert!(
        number(echo_echo[7]) > 0.0,
        "a p99 from the histogram: {out}"
    );
    let nosuch = row(&out, &["echo", "nosuch", proxy_page, "proxy"]);
    assert_eq!(nosuch[6], "100.0%", "{out}");
    let bench = row(&out, &["bench", "*", proxy_page, "proxy"]);
    assert!(number(bench[4]) > 0.0, "{out}");
    // The proxy's total (calls counted as they arrive, not as they end as
    // per method: about the same), the endpoints' exceptions among its
    // errors.
    let total = row(&out, &["*", "*", proxy_page, "proxy"]);
    assert!(
        number(total[4]) > 0.8 * (number(echo_all[4]) + number(bench[4])),
        "{out}"
    );
    assert!(number(total[5]) > 0.0, "{out}");

    // As the LB counts them.
    let lb_all = row(&out, &["bench", "*", lb_page, "lb"]);
    assert!(number(lb_all[4]) > 0.0, "{out}");
    assert_eq!(lb_all[6], "0.0%", "{out}");
    let lb_echo = row(&out, &["bench", "echo", lb_page, "lb"]);
    assert!(number(lb_echo[4]) > 0.0, "{out}");

    // The endpoints as the proxy sees them; the LB's has its traffic.
    let e = row(&out, &["echo", echo_at.as_str(), proxy_page]);
    assert_eq!((e[3], e[6]), ("Up", "no"), "{out}");
    assert_eq!(&e[7..], ["-", "-", "-", "-"], "no LB page for it: {out}");
    let b = row(&out, &["bench", bench_at.as_str(), proxy_page]);
    assert_eq!(b[3], "Up", "{out}");
    assert!(number(b[7]) > 0.0, "the LB's rate: {out}");
    stack.proxy.shutdown().await;
}

#[tokio::test]
async fn top_once_reports_unreadable_pages_and_fails_when_none_is_read() {
    let stack = Stack::start("").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let pages = format!("{dead},{}", stack.page);
    let run = rpcctl(&[
        "top",
        "--once",
        "--json",
        "--status",
        &pages,
        "--interval-ms",
        "200",
    ])
    .await;
    assert!(run.ok, "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["sources"][0]["address"], dead.as_str());
    let error = doc["sources"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("connect:"), "{doc}");
    assert_eq!(doc["sources"][1]["kind"], "proxy", "{doc}");
    // The proxy's total, counted twice: a rate of zero.
    let total = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"].is_null())
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(total["traffic"]["rate"], 0.0, "{doc}");

    let run = rpcctl(&["top", "--once", "--status", &dead, "--interval-ms", "100"]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout
            .contains(&format!("{dead}  -     error: connect:")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("no status page could be read"),
        "{}",
        run.stderr
    );

    let run = rpcctl(&["top", "--once"]).await;
    assert_eq!(run.code, Some(2), "--status is required: {}", run.stderr);
    stack.proxy.shutdown().await;
}
