//! Real sockets on loopback: a raw framed peer, an in-memory registry and
//! test handlers.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rpc_config::Config;
use rpc_sdk::{handler_fn, Handler};

pub use rpc_testkit::{eventually, exception_text as exception_of, MemRegistry, Peer, STEP};

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
