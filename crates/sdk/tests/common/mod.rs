//! Real sockets on loopback: a raw framed peer, an in-memory registry and
//! test handlers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_registry::{Endpoint, Registration, Registry, RegistryError, ServiceMap};
use rpc_sdk::{handler_fn, Handler};
use rpc_transport::{Address, Stream};
use tokio::sync::watch;
use tokio_util::codec::Framed;

pub const STEP: Duration = Duration::from_secs(5);

/// A raw framed peer (client of a service, or the LB side of a worker).
pub struct Peer {
    pub io: Framed<Stream, FrameCodec>,
}

impl Peer {
    pub fn new(stream: Stream) -> Peer {
        Peer {
            io: Framed::new(stream, FrameCodec::default()),
        }
    }

    pub async fn connect(addr: &Address) -> Peer {
        Peer::new(Stream::connect(addr).await.expect("connect"))
    }

    pub async fn send(&mut self, kind: MessageType, name: &str, seqid: i32, body: &[u8]) {
        self.send_frame(encode_message(kind, name.as_bytes(), seqid, body))
            .await;
    }

    pub async fn send_frame(&mut self, frame: BytesMut) {
        self.io.send(frame.freeze()).await.expect("send");
    }

    /// The next frame, or `None` once the peer closed the connection.
    pub async fn recv_frame(&mut self) -> Option<BytesMut> {
        let f = tokio::time::timeout(STEP, self.io.next())
            .await
            .expect("a frame in time")?;
        f.ok()
    }

    pub async fn recv(&mut self) -> Option<Message> {
        Some(Message::parse(self.recv_frame().await?).expect("well-formed message"))
    }

    pub async fn call(&mut self, name: &str, seqid: i32, body: &[u8]) -> Message {
        self.send(MessageType::Call, name, seqid, body).await;
        self.recv().await.expect("connection open")
    }

    /// True if nothing arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.io.next()).await.is_err()
    }
}

pub fn exception_of(m: &Message) -> (i32, String) {
    assert_eq!(m.kind(), MessageType::Exception, "expected an exception");
    let e = rpc_codec::read_application_exception(m.body()).unwrap();
    (e.kind, e.message)
}

/// A Thrift result struct holding one string in field 0.
pub fn string_result(s: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(11);
    b.put_i16(0);
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
    b.put_u8(0);
    b.freeze()
}

/// Test methods: `echo` answers the body, `slow` after 300 ms, `sleep`
/// after as many ms as its body's text says, `bad` fails, `panic` panics,
/// oneways are counted.
pub fn test_handler(oneways: Arc<AtomicUsize>) -> impl Handler {
    handler_fn(move |method: String, body: Bytes| {
        let oneways = oneways.clone();
        async move {
            match method.as_str() {
                "echo" => Ok(body),
                "slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(body)
                }
                "sleep" => {
                    let ms: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(body)
                }
                "bad" => Err("bad input".to_string()),
                "panic" => panic!("handler exploded"),
                "note" => {
                    oneways.fetch_add(1, Ordering::SeqCst);
                    Ok(Bytes::new())
                }
                other => Err(format!("unknown method {other}")),
            }
        }
    })
}

pub fn service_config(extra: &str) -> Config {
    let mut c = Config::parse(extra).unwrap();
    for (k, v) in [("front_host", "127.0.0.1"), ("front_port", "0")] {
        if !extra.contains(k) {
            c.set(k, v).unwrap();
        }
    }
    c
}

/// In-memory registry for tests.
#[derive(Clone)]
pub struct MemRegistry {
    map: Arc<watch::Sender<Arc<ServiceMap>>>,
}

impl MemRegistry {
    pub fn new() -> MemRegistry {
        MemRegistry {
            map: Arc::new(watch::channel(Arc::new(BTreeMap::new())).0),
        }
    }

    pub fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        self.map.borrow().get(service).cloned().unwrap_or_default()
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

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl MemRegistry {
    pub fn map_is_empty(&self) -> bool {
        self.map.borrow().values().all(Vec::is_empty)
    }
}
