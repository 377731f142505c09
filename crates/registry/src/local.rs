//! Embedded single-machine registry (in progress).
use std::path::Path;

use crate::RegistryError;

pub struct LocalRegistry;

impl LocalRegistry {
    pub fn open(_dir: &Path, _product: &str) -> Result<Self, RegistryError> {
        unimplemented!()
    }
}
#[async_trait::async_trait]
impl crate::Registry for LocalRegistry {
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
