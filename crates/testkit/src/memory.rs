//! An in-memory [`Registry`] for tests of logic around registration (the
//! real backends have their own conformance suite in `rpc-registry`).

use std::collections::BTreeMap;
use std::sync::Arc;

use rpc_registry::{Endpoint, Registration, Registry, RegistryError, ServiceMap};
use tokio::sync::watch;

#[derive(Clone)]
pub struct MemRegistry {
    map: Arc<watch::Sender<Arc<ServiceMap>>>,
}

impl Default for MemRegistry {
    fn default() -> Self {
        MemRegistry::new()
    }
}

impl MemRegistry {
    pub fn new() -> MemRegistry {
        MemRegistry {
            map: Arc::new(watch::channel(Arc::new(BTreeMap::new())).0),
        }
    }

    /// Replaces the endpoints of `service`.
    pub fn set(&self, service: &str, endpoints: Vec<Endpoint>) {
        self.map.send_modify(|m| {
            Arc::make_mut(m).insert(service.to_string(), endpoints);
        });
    }

    pub fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        self.map.borrow().get(service).cloned().unwrap_or_default()
    }

    pub fn map_is_empty(&self) -> bool {
        self.map.borrow().values().all(Vec::is_empty)
    }
}

#[async_trait::async_trait]
impl Registry for MemRegistry {
    async fn register(&self, endpoint: Endpoint) -> Result<Registration, RegistryError> {
        let map = self.map.clone();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        map.send_modify(|m| {
            Arc::make_mut(m)
                .entry(endpoint.service.clone())
                .or_default()
                .push(endpoint.clone())
        });
        let task = tokio::spawn(async move {
            let _ = stop_rx.await;
            map.send_modify(|m| {
                if let Some(v) = Arc::make_mut(m).get_mut(&endpoint.service) {
                    v.retain(|e| e.service_id != endpoint.service_id);
                }
            });
        });
        Ok(Registration::new(stop, task))
    }

    async fn watch(&self) -> Result<watch::Receiver<Arc<ServiceMap>>, RegistryError> {
        Ok(self.map.subscribe())
    }
}
