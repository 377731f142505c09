//! Real sockets on loopback: a raw framed client, a scriptable endpoint
//! that speaks SPEC §4, and an in-memory registry for logic tests.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_registry::{Endpoint, Registration, Registry, RegistryError, ServiceMap};
use rpc_transport::{Address, Listener, Stream};
use tokio::sync::watch;
use tokio_util::codec::Framed;

pub use rpc_testkit::{eventually, exception_text, MemRegistry, Peer as Client, STEP};

pub use rpc_testkit::endpoint::{tags_until_each_over, TestEndpoint};

// === Registry ===

// === Proxy ===

pub fn test_config(extra: &str) -> Config {
    let mut c = Config::parse(extra).unwrap();
    if c.proxy_address.is_empty() {
        c.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    }
    c
}

pub async fn start_proxy(
    config: &Config,
    registry: Arc<dyn Registry>,
) -> (rpc_proxy::ProxyHandle, Address) {
    let proxy = rpc_proxy::start(config, registry)
        .await
        .expect("proxy starts");
    let addr = proxy.addresses()[0].clone();
    (proxy, addr)
}
