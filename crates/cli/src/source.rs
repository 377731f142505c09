//! Where `rpcctl` reads: the registry `--zk` or the config's `zk` names
//! (ZooKeeper, or the embedded directory registry), read once. Nothing is
//! created in it but the drain marks `drain` asks for.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rpc_config::{RegistrySpec, ZkAuth};
use rpc_registry::{local, zk::ZkReader, DrainMark, RegistryError, ServiceMap};

pub enum Source {
    ZooKeeper {
        hosts: String,
        reader: ZkReader,
        /// The longest any one ZooKeeper request may take.
        timeout: Duration,
    },
    Local(PathBuf),
}

impl Source {
    /// Connects to ZooKeeper (authenticated as `auth`, if given: the drain
    /// marks written are then that identity's), giving up after `timeout`;
    /// a local registry needs no connection.
    pub async fn open(
        spec: &RegistrySpec,
        auth: Option<&ZkAuth>,
        timeout: Duration,
    ) -> anyhow::Result<Source> {
        Ok(match spec {
            RegistrySpec::ZooKeeper(hosts) => {
                let connect = ZkReader::connect_as(hosts, timeout, auth);
                let reader = bounded(hosts, timeout, connect).await?;
                Source::ZooKeeper {
                    hosts: hosts.clone(),
                    reader,
                    timeout,
                }
            }
            RegistrySpec::Local(dir) => Source::Local(dir.clone()),
        })
    }

    /// The registry as `--zk` spells it: `h1:2181,h2:2181` or `local:DIR`.
    pub fn describe(&self) -> String {
        match self {
            Source::ZooKeeper { hosts, .. } => hosts.clone(),
            Source::Local(dir) => format!("local:{}", dir.display()),
        }
    }

    /// Every product, sorted.
    pub async fn products(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Source::ZooKeeper {
                hosts,
                reader,
                timeout,
            } => bounded(hosts, *timeout, reader.products()).await,
            // A few small directory reads: blocking the one thread of a
            // command-line tool is fine.
            Source::Local(dir) => Ok(local::products(dir)?),
        }
        .with_context(|| format!("list the products of {}", self.describe()))
    }

    /// Every service of `product` (services left without endpoints
    /// included), endpoints sorted by `service_id`.
    pub async fn services(&self, product: &str) -> anyhow::Result<ServiceMap> {
        match self {
            Source::ZooKeeper {
                hosts,
                reader,
                timeout,
            } => bounded(hosts, *timeout, reader.services(product)).await,
            Source::Local(dir) => Ok(local::read_product(dir, product)?),
        }
        .with_context(|| format!("read product {product} from {}", self.describe()))
    }

    /// Puts a drain mark on endpoint `service_id` of `product`/`service`;
    /// false if it had one.
    pub async fn drain(
        &self,
        product: &str,
        service: &str,
        service_id: &str,
        mark: &DrainMark,
    ) -> anyhow::Result<bool> {
        match self {
            Source::ZooKeeper {
                hosts,
                reader,
                timeout,
            } => {
                let request = reader.drain(product, service, service_id, mark);
                bounded(hosts, *timeout, request).await
            }
            Source::Local(dir) => Ok(local::drain(dir, product, service, service_id, mark)?),
        }
        .with_context(|| format!("drain {product}/{service} {service_id}"))
    }

    /// Removes the drain mark of endpoint `service_id`; false if it had
    /// none.
    pub async fn undrain(
        &self,
        product: &str,
        service: &str,
        service_id: &str,
    ) -> anyhow::Result<bool> {
        match self {
            Source::ZooKeeper {
                hosts,
                reader,
                timeout,
            } => {
                bounded(
                    hosts,
                    *timeout,
                    reader.undrain(product, service, service_id),
                )
                .await
            }
            Source::Local(dir) => Ok(local::undrain(dir, product, service, service_id)?),
        }
        .with_context(|| format!("undrain {product}/{service} {service_id}"))
    }
}

/// A ZooKeeper request that fails, rather than hangs, when no server
/// answers in time.
async fn bounded<T>(
    hosts: &str,
    timeout: Duration,
    request: impl Future<Output = Result<T, RegistryError>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("ZooKeeper at {hosts} did not answer within {timeout:?}"),
    }
}
