//! The registry, read whole every refresh through the read-only operator
//! reads of `rpc-registry` (`zk::ZkReader`, `local::{products,
//! read_product}`): nothing is watched, created or registered.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rpc_config::RegistrySpec;
use rpc_registry::{local, zk::ZkReader, RegistryError, ServiceMap};

/// Every product with its services (those left without endpoints
/// included).
pub type Tree = BTreeMap<String, ServiceMap>;

pub enum Reader {
    ZooKeeper {
        hosts: String,
        /// The session, opened on first use and again after a failure.
        reader: Option<ZkReader>,
        /// The longest connecting or any one read may take.
        timeout: Duration,
    },
    Local(PathBuf),
}

impl Reader {
    pub fn new(spec: &RegistrySpec, timeout: Duration) -> Reader {
        match spec {
            RegistrySpec::ZooKeeper(hosts) => Reader::ZooKeeper {
                hosts: hosts.clone(),
                reader: None,
                timeout,
            },
            RegistrySpec::Local(dir) => Reader::Local(dir.clone()),
        }
    }

    /// The registry as `--zk` spells it: `h1:2181,h2:2181` or `local:DIR`.
    pub fn describe(&self) -> String {
        match self {
            Reader::ZooKeeper { hosts, .. } => hosts.clone(),
            Reader::Local(dir) => format!("local:{}", dir.display()),
        }
    }

    /// The whole tree, or why it could not be read. A ZooKeeper session
    /// that failed is dropped, and the next read opens a new one.
    pub async fn read(&mut self) -> Result<Tree, String> {
        match self {
            Reader::ZooKeeper {
                hosts,
                reader,
                timeout,
            } => {
                let result = read_zk(hosts, reader, *timeout).await;
                if result.is_err() {
                    *reader = None;
                }
                result
            }
            Reader::Local(dir) => {
                let dir = dir.clone();
                // Directory reads: off the runtime's threads.
                tokio::task::spawn_blocking(move || read_local(&dir))
                    .await
                    .map_err(|e| format!("read the registry: {e}"))?
            }
        }
    }
}

async fn read_zk(
    hosts: &str,
    reader: &mut Option<ZkReader>,
    timeout: Duration,
) -> Result<Tree, String> {
    if reader.is_none() {
        *reader = Some(bounded(hosts, timeout, ZkReader::connect(hosts, timeout)).await?);
    }
    let zk = reader.as_ref().expect("connected above");
    let mut tree = Tree::new();
    for product in bounded(hosts, timeout, zk.products()).await? {
        let services = bounded(hosts, timeout, zk.services(&product)).await?;
        tree.insert(product, services);
    }
    Ok(tree)
}

fn read_local(dir: &std::path::Path) -> Result<Tree, String> {
    let mut tree = Tree::new();
    for product in local::products(dir).map_err(|e| e.to_string())? {
        let services = local::read_product(dir, &product).map_err(|e| e.to_string())?;
        tree.insert(product, services);
    }
    Ok(tree)
}

/// A ZooKeeper request that fails, rather than hangs, when no server
/// answers within `timeout`.
async fn bounded<T>(
    hosts: &str,
    timeout: Duration,
    request: impl Future<Output = Result<T, RegistryError>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, request).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "ZooKeeper at {hosts} did not answer within {timeout:?}"
        )),
    }
}
