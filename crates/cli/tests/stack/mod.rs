//! A real proxy on the embedded registry, with real services behind it
//! (the workspace's binaries, or servers in the test), for the `call` and
//! `top` tests. Everything listens on loopback and goes with the stack.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rpc_registry::local::LocalRegistry;
use rpc_testkit::{cargo_bin, http_get, STEP};
use serde_json::Value;
use tokio::process::{Child, Command};

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub registry_dir: PathBuf,
    pub registry: Arc<LocalRegistry>,
    pub proxy: rpc_proxy::ProxyHandle,
    /// The proxy's `host:port`.
    pub address: String,
    /// The proxy's status page.
    pub page: SocketAddr,
    /// Processes started with [`Stack::spawn`], killed when dropped.
    children: Vec<(String, Child)>,
}

impl Stack {
    /// A proxy of product `test` with its status page; `extra`: more
    /// config lines.
    pub async fn start(extra: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let registry_dir = dir.path().join("registry");
        let registry = Arc::new(LocalRegistry::open(&registry_dir, "test").unwrap());
        let config = rpc_config::Config::parse(&format!(
            "zk=local:{}\nproduct=test\nmetrics_address=127.0.0.1:0\n\
             proxy_address=127.0.0.1:0\n{extra}",
            registry_dir.display()
        ))
        .unwrap();
        let proxy = rpc_proxy::start(&config, registry.clone()).await.unwrap();
        let address = proxy.addresses()[0].to_string();
        let page = proxy.metrics_address().expect("a status page");
        Stack {
            dir,
            registry_dir,
            registry,
            proxy,
            address,
            page,
            children: Vec::new(),
        }
    }

    /// Writes config.ini `name` for a process of this stack: its registry
    /// and product, then `lines`.
    pub fn ini(&self, name: &str, lines: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            "zk = local:{}\nproduct = test\n{lines}\n",
            self.registry_dir.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the workspace binary `name` with `args`; its output goes to
    /// a file shown by [`Stack::output`].
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = self
            .dir
            .path()
            .join(format!("{name}.{}.out", self.children.len()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(cargo_bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((log.display().to_string(), child));
    }

    /// What the spawned processes printed so far.
    pub fn output(&self) -> String {
        self.children
            .iter()
            .map(|(log, _)| {
                format!(
                    "--- {log}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The proxy's `/status`.
    pub async fn status(&self) -> Value {
        serde_json::from_str(&http_get(self.page, "/status").await).unwrap()
    }

    /// Waits until the proxy has a connection up to an endpoint of
    /// `service`; that endpoint's address.
    pub async fn routes(&self, service: &str) -> String {
        let deadline = tokio::time::Instant::now() + 2 * STEP;
        loop {
            let status = self.status().await;
            let up = status["endpoints"].as_array().and_then(|all| {
                all.iter()
                    .find(|e| e["service"] == service && e["state"] == "Up")
                    .and_then(|e| e["endpoint"].as_str().map(str::to_string))
            });
            if let Some(endpoint) = up {
                return endpoint;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the proxy never routed {service}: {status}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
