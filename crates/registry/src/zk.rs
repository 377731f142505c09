//! ZooKeeper registry (in progress).
use std::path::Path;

use crate::RegistryError;

pub struct ZkRegistry;

impl ZkRegistry {
    pub async fn connect(
        _hosts: &str,
        _product: &str,
        _t: std::time::Duration,
    ) -> Result<Self, RegistryError> {
        unimplemented!()
    }
}
#[async_trait::async_trait]
impl crate::Registry for ZkRegistry {
    async fn register(&self, _e: crate::Endpoint) -> Result<crate::Registration, RegistryError> {
        unimplemented!()
    }
    async fn watch(
        &self,
    ) -> Result<tokio::sync::watch::Receiver<std::sync::Arc<crate::ServiceMap>>, RegistryError>
    {
        unimplemented!()
    }
}
