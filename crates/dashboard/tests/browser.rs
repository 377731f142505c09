//! The dashboard as an operator sees it: a real stack (a throwaway
//! ZooKeeper, `rpc-proxy`, `rpc-lb` supervising `rpc-bench-server` workers,
//! and an `rpc-bench-server` service registering itself), calls flowing
//! through the proxy, the dashboard started in-process, and the page read
//! in Debian's headless chromium through chromedriver (WebDriver).
//!
//! Skipped, with a message, when chromium or chromedriver is not
//! installed, unless `RPC_TESTS_STRICT=1`, which makes that a failure.
//! Screenshots go to `target/tmp/dashboard/`.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fleet_until, rate, start_dashboard, state};
use fantoccini::{Client, ClientBuilder};
use rpc_codec::MessageType;
use rpc_config::RegistrySpec;
use rpc_dashboard::Options;
use rpc_testkit::{free_port, Peer, ZkServer};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The service's `code_url_version`, and the commit page it must link to.
const SHA: &str = "4f9c2e1a7b3d5e6f8091a2b3c4d5e6f708192a3b";
const CODE: &str = "git@github.com:example/echo.git@4f9c2e1a7b3d5e6f8091a2b3c4d5e6f708192a3b";
const COMMIT_PAGE: &str =
    "https://github.com/example/echo/commit/4f9c2e1a7b3d5e6f8091a2b3c4d5e6f708192a3b";

/// Bound for the stack to come up and for the page to show a change.
const WAIT: Duration = Duration::from_secs(30);

/// Chromium and chromedriver, where Debian's `chromium` and
/// `chromium-driver` packages put them (or `CHROMIUM` / `CHROMEDRIVER`).
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, candidates: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p)).filter(|p| p.exists());
        }
        candidates.iter().map(PathBuf::from).find(|p| p.exists())
    };
    let chromium = find(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let driver = find(
        "CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    match (chromium, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => Err(format!(
            "{}{}not installed (Debian: apt-get install chromium chromium-driver)",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver " } else { "" },
        )),
    }
}

/// A workspace binary next to this test's target directory, built on
/// demand when only this package was built.
fn binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", package, "--bin", name]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let ok = build.status().is_ok_and(|s| s.success());
        assert!(ok && path.exists(), "cannot build {}", path.display());
    }
    path
}

/// A child process in a process group of its own, its output in a log
/// file; killed with its group when dropped (and its log shown if the
/// test failed).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, program: &Path, args: &[&str], dir: &Path, cwd: Option<&Path>) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signals a process this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Fails the test, with the log, if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail());
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: the process group this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.name, self.tail());
        }
    }
}

fn write_ini(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Until a TCP connection to `addr` succeeds.
async fn listening(addr: &str, proc: &mut Proc) {
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        proc.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} never listened on {addr}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `{1: binary data}`: the arguments of the bench service's methods.
fn call_args() -> Vec<u8> {
    let mut b = vec![11, 0, 1, 0, 0, 0, 5];
    b.extend_from_slice(b"hello");
    b.push(0);
    b
}

/// Calls through the proxy until aborted: `echo` and `search` (the LB's
/// service) about 40 times a second each, one `search` call in ten a
/// `fail` (an exception: the LB's error rate).
async fn load(proxy: String) {
    let mut peer = Peer::connect(&proxy.parse().unwrap()).await;
    let args = call_args();
    for seqid in 1.. {
        let mut calls = vec!["echo:echo", "search:echo"];
        if seqid % 10 == 0 {
            calls.push("search:fail");
        }
        for name in calls {
            peer.send(MessageType::Call, name, seqid, &args).await;
            // Ends quietly when the stack goes away at the end of the test.
            if peer.recv().await.is_none() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What the page shows, read from its DOM: products, service headings,
/// every endpoint row with its cells, every traffic line, the status
/// pages.
const READ_PAGE: &str = r#"
const text = (root, sel) => { const e = root.querySelector(sel); return e ? e.innerText.trim() : null; };
return {
  updated: Number(document.body.dataset.updated),
  products: [...document.querySelectorAll("section.product")].map(s => s.dataset.product),
  services: [...document.querySelectorAll(".service h3")].map(h => h.innerText.trim()),
  endpoints: [...document.querySelectorAll("tr.endpoint")].map(tr => {
    const card = tr.closest(".service");
    const a = tr.querySelector("a.code-link");
    return {
      product: card.dataset.product, service: card.dataset.service,
      frontend: text(tr, ".frontend"), state: tr.dataset.state, state_text: text(tr, ".state"),
      service_id: text(tr, ".service-id"), hostname: text(tr, ".hostname"),
      deploy_path: text(tr, ".deploy-path"), start_time: text(tr, ".start-time"),
      code_text: a ? a.innerText.trim() : null, code_href: a ? a.href : null,
      row: tr.innerText,
    };
  }),
  traffic: [...document.querySelectorAll(".service .traffic")].map(t => ({
    service: t.dataset.service, source: t.dataset.source, kind: t.dataset.kind,
    rate: t.dataset.rate === "" ? null : Number(t.dataset.rate),
    charts: t.querySelectorAll("svg.spark").length,
    lines: t.querySelectorAll("svg.spark polyline").length,
    text: t.innerText,
  })),
  sources: [...document.querySelectorAll("tr.source")].map(r => ({
    address: r.dataset.address, kind: r.dataset.kind, text: r.innerText,
  })),
};
"#;

async fn read_page(client: &Client) -> Value {
    client
        .execute(READ_PAGE, vec![])
        .await
        .expect("read the page")
}

/// Reads the page (which refreshes itself: it is never reloaded) until
/// `cond` holds, failing with `what` and the last reading after `limit`.
async fn page_until(
    client: &Client,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let every = Duration::from_millis(200);
    rpc_testkit::read_until(what, limit, every, || read_page(client), cond).await
}

/// The row of the endpoint at `frontend`, if the page shows it.
fn row<'a>(page: &'a Value, frontend: &str) -> Option<&'a Value> {
    page["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["frontend"] == frontend)
}

fn traffic<'a>(page: &'a Value, source: &str, service: &str) -> Option<&'a Value> {
    page["traffic"]
        .as_array()?
        .iter()
        .find(|t| t["source"] == source && t["service"] == service)
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
    path
}

/// A WebDriver session in headless chromium, with a profile of its own.
async fn open_browser(chromium: &Path, driver: &Path, dir: &Path) -> (Proc, Client) {
    let port = free_port();
    let port_arg = format!("--port={port}");
    let mut chromedriver = Proc::start(
        "chromedriver",
        driver,
        &[&port_arg, "--allowed-ips=127.0.0.1"],
        dir,
        None,
    );
    listening(&format!("127.0.0.1:{port}"), &mut chromedriver).await;
    let profile = dir.join("chromium-profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--no-proxy-server",
                "--window-size=1440,1200",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = tokio::time::timeout(
        WAIT,
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .expect("chromium started in time")
    .unwrap_or_else(|e| panic!("a WebDriver session: {e}\n{}", chromedriver.tail()));
    (chromedriver, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_the_fleet_and_an_endpoint_leaving() {
    let (chromium, driver) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var("RPC_TESTS_STRICT").as_deref() == Ok("1") => {
            panic!("RPC_TESTS_STRICT=1 and {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED a_browser_shows_the_fleet_and_an_endpoint_leaving: {why}");
            return;
        }
    };
    let (proxy_bin, lb_bin, bench_bin) = (
        binary("rpc-proxy", "rpc-proxy"),
        binary("rpc-lb", "rpc-lb"),
        binary("rpc-bench-server", "rpc-bench"),
    );
    let dir = tempfile::Builder::new()
        .prefix("rpc-dashboard-")
        .tempdir()
        .unwrap();
    let dir = dir.path();
    let zk = ZkServer::start();
    let hosts = zk.hosts();

    // The service: registers `echo` from its deploy directory, with a
    // code version.
    let deploy = dir.join("srv-echo");
    std::fs::create_dir(&deploy).unwrap();
    let deploy = deploy.canonicalize().unwrap();
    let echo_front = format!("127.0.0.1:{}", free_port());
    let ini = write_ini(
        dir,
        "echo.ini",
        &format!(
            "zk = {hosts}\nproduct = test\nservice = echo\nfront_host = 127.0.0.1\nfront_port = {}\n",
            echo_front.rsplit_once(':').unwrap().1
        ),
    );
    let mut service = Proc::start(
        "echo-service",
        &bench_bin,
        &["-c", &ini, "--code-url-version", CODE],
        dir,
        Some(&deploy),
    );

    // The LB of `search`, supervising two bench workers.
    let search_front = format!("127.0.0.1:{}", free_port());
    let lb_page = format!("127.0.0.1:{}", free_port());
    let ini = write_ini(
        dir,
        "lb.ini",
        &format!(
            "zk = {hosts}\nproduct = test\nservice = search\nfront_host = 127.0.0.1\n\
             front_port = {}\nback_address = {}\nworker_pool_size = 2\n\
             metrics_address = {lb_page}\nregister_delay = 0\nquiet_period = 0.2\n\
             stop_timeout = 5\nworker_command = '{}' --sleep-ms 1\nworker_count = 2\n",
            search_front.rsplit_once(':').unwrap().1,
            dir.join("workers.sock").display(),
            bench_bin.display(),
        ),
    );
    let mut lb = Proc::start("lb", &lb_bin, &["-c", &ini], dir, None);

    // The proxy, with its status page.
    let proxy_addr = format!("127.0.0.1:{}", free_port());
    let proxy_page = format!("127.0.0.1:{}", free_port());
    let ini = write_ini(
        dir,
        "proxy.ini",
        &format!(
            "zk = {hosts}\nproduct = test\nproxy_address = {proxy_addr}\n\
             metrics_address = {proxy_page}\nrpc_timeout = 5\n"
        ),
    );
    let mut proxy = Proc::start("proxy", &proxy_bin, &["-c", &ini], dir, None);

    let mut options = Options::new(RegistrySpec::ZooKeeper(hosts.clone()));
    options.refresh = Duration::from_secs(1);
    options.probe_timeout = Duration::from_millis(500);
    options.status_pages = vec![proxy_page.clone(), lb_page.clone()];
    let (dash, _dashboard) = start_dashboard(options).await;

    listening(&proxy_addr, &mut proxy).await;
    listening(&lb_page, &mut lb).await;
    listening(&echo_front, &mut service).await;
    let load = tokio::spawn(load(proxy_addr.clone()));

    // The API first: the stack is up and counted.
    let up = |f: &Value| {
        state(f, "test", "echo", &echo_front).as_deref() == Some("up")
            && state(f, "test", "search", &search_front).as_deref() == Some("up")
            && rate(f, &proxy_page, "echo").is_some_and(|r| r > 0.0)
            && rate(f, &lb_page, "search").is_some_and(|r| r > 0.0)
    };
    fleet_until(dash, "both endpoints up and their calls counted", WAIT, up).await;

    // Then the browser.
    let (_chromedriver, client) = open_browser(&chromium, &driver, dir).await;
    client
        .goto(&format!("http://{dash}/"))
        .await
        .expect("open the dashboard");
    let page = page_until(&client, "the fleet with its traffic", WAIT, |p| {
        let echo_rate = traffic(p, &proxy_page, "echo").and_then(|t| t["rate"].as_f64());
        let search_rate = traffic(p, &lb_page, "search").and_then(|t| t["rate"].as_f64());
        row(p, &echo_front).is_some_and(|r| r["state"] == "up")
            && row(p, &search_front).is_some_and(|r| r["state"] == "up")
            && echo_rate.is_some_and(|r| r > 0.0)
            && search_rate.is_some_and(|r| r > 0.0)
    })
    .await;
    assert!(
        page["products"]
            .as_array()
            .unwrap()
            .contains(&json!("test")),
        "{page:#}"
    );
    let services = page["services"].as_array().unwrap();
    assert!(services.contains(&json!("echo")) && services.contains(&json!("search")));

    // The service's SPEC §6 fields, and its code version linked to the commit.
    let echo = row(&page, &echo_front).unwrap();
    assert_eq!(echo["service"], "echo");
    assert_eq!(echo["state_text"], "up");
    assert_eq!(echo["service_id"], rpc_registry::service_id(&echo_front));
    let hostname = rpc_registry::Endpoint::new("x", "y").hostname;
    assert_eq!(echo["hostname"], hostname.as_str());
    assert_eq!(echo["deploy_path"], deploy.display().to_string());
    let start = echo["start_time"].as_str().unwrap();
    assert!(start.len() > 19 && start.contains(" ago"), "{start}");
    assert_eq!(echo["code_text"], CODE);
    assert_eq!(echo["code_href"], COMMIT_PAGE);
    assert!(echo["row"].as_str().unwrap().contains(SHA));
    // The LB's endpoint.
    let search = row(&page, &search_front).unwrap();
    assert_eq!(
        (&search["service"], &search["hostname"]),
        (&json!("search"), &json!(hostname))
    );

    // Traffic: the proxy counts echo's calls, the LB search's with its
    // errors and p99; each figure has its chart.
    let t = traffic(&page, &proxy_page, "echo").unwrap();
    // Rate and latency; errors too where the proxy counts them by service.
    assert_eq!(t["kind"], "proxy");
    assert!(t["charts"].as_u64() >= Some(2), "{t}");
    assert!(t["lines"].as_u64() >= Some(1), "{t}");
    let t = traffic(&page, &lb_page, "search").unwrap();
    assert_eq!(t["kind"], "lb");
    assert_eq!(t["charts"], 3, "{t}");
    let text = t["text"].as_str().unwrap();
    assert!(text.contains("errors") && text.contains("p99"), "{t}");
    let sources = page["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert!(sources
        .iter()
        .all(|s| s["text"].as_str().unwrap().contains("read")));
    screenshot(&client, "fleet.png").await;

    // SIGTERM: the service leaves the registry and stops; the page, left
    // alone, shows it gone (or no longer lists it).
    service.signal(libc::SIGTERM);
    let page = page_until(&client, "the stopped endpoint gone", WAIT, |p| {
        match row(p, &echo_front) {
            None => true,
            Some(r) => r["state"] == "gone",
        }
    })
    .await;
    assert!(
        row(&page, &search_front).is_some_and(|r| r["state"] == "up"),
        "{page:#}"
    );
    let shot = screenshot(&client, "fleet-endpoint-gone.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    load.abort();
    client.close().await.expect("close the browser");
    lb.assert_running();
    proxy.assert_running();
    drop(zk);
}
