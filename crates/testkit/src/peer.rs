//! A raw framed peer on a real socket: the client of a proxy, LB or
//! service, or the LB side of a worker. Every wait is bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rpc_codec::{encode_message, FrameCodec, Message, MessageType};
use rpc_transport::{Address, Stream};
use tokio_util::codec::Framed;

use crate::STEP;

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

    /// Bytes as they are, framed or not.
    pub async fn send_raw(&mut self, raw: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.io.get_mut().write_all(raw).await.expect("send");
    }

    /// The next frame, or `None` once the other side closed the connection.
    pub async fn recv_frame(&mut self) -> Option<BytesMut> {
        let f = tokio::time::timeout(STEP * 3, self.io.next())
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

    /// Receives `n` replies (in whatever order) keyed by seqid.
    pub async fn recv_n(&mut self, n: usize) -> BTreeMap<i32, Message> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let m = self.recv().await.expect("connection open");
            assert!(out.insert(m.seqid(), m).is_none(), "duplicate seqid");
        }
        out
    }

    /// True if nothing arrives within `d`.
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.io.next()).await.is_err()
    }
}

/// The kind and text of an `EXCEPTION` reply (panics on anything else).
pub fn exception_text(m: &Message) -> (i32, String) {
    assert_eq!(m.kind(), MessageType::Exception, "expected an exception");
    let e = rpc_codec::read_application_exception(m.body()).unwrap();
    (e.kind, e.message)
}
