//! Whether an endpoint answers: one SPEC §4 heartbeat on a connection of
//! its own, timed to its echo. The dashboard and `rpcctl ping` share it.

use std::time::Duration;

use rpc_codec::{heartbeat, Message, MessageType, LEN_PREFIX};
use rpc_transport::tls::TlsClient;
use rpc_transport::{Address, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

/// The seqid of the probe's heartbeat, which the echo carries back.
const SEQID: i32 = 0x64_62; // "db"

/// An echo is a few bytes; anything much larger is not one.
const MAX_ECHO: usize = 4096;

/// Connects to `frontend`, sends one heartbeat and returns how long its
/// echo took (from sending), or why there was none. An endpoint that
/// registered `"tls": true` is reached through `tls` (the proxy's keys:
/// it accepts nothing else). Everything, the connection and handshake
/// included, ends within `limit`.
pub async fn heartbeat_rtt(
    frontend: &str,
    serves_tls: bool,
    tls: Option<&TlsClient>,
    limit: Duration,
) -> Result<Duration, String> {
    let deadline = Instant::now() + limit;
    let address: Address = frontend.parse()?;
    let tls = match (serves_tls, tls) {
        (false, _) => None,
        (true, Some(client)) => Some(client),
        (true, None) => {
            return Err("serves TLS only: no client certificate configured \
                        (tls_ca_file, tls_cert_file, tls_key_file)"
                .into())
        }
    };
    let connect = async {
        let stream = Stream::connect(&address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            Some(client) => client
                .handshake(&address, stream)
                .await
                .map_err(|e| format!("TLS: {e}")),
            None => Ok(stream),
        }
    };
    let mut stream = match timeout_at(deadline, connect).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(format!(
                "connect: no answer within {} ms",
                limit.as_millis()
            ))
        }
    };
    let sent = Instant::now();
    let exchange = async {
        stream
            .write_all(&heartbeat(SEQID))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut prefix = [0u8; LEN_PREFIX];
        stream
            .read_exact(&mut prefix)
            .await
            .map_err(|e| format!("no echo: {e}"))?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_ECHO {
            return Err(format!("answered a {len}-byte frame, not an echo"));
        }
        let mut frame = vec![0u8; LEN_PREFIX + len];
        frame[..LEN_PREFIX].copy_from_slice(&prefix);
        stream
            .read_exact(&mut frame[LEN_PREFIX..])
            .await
            .map_err(|e| format!("no echo: {e}"))?;
        let rtt = sent.elapsed();
        match Message::peek_frame(&frame) {
            Ok((MessageType::Heartbeat, SEQID)) => Ok(rtt),
            Ok((kind, seqid)) => Err(format!("answered {kind:?} (seqid {seqid}), not an echo")),
            Err(e) => Err(format!("bad answer: {e}")),
        }
    };
    match timeout_at(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no echo within {} ms", limit.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_transport::Listener;

    #[tokio::test]
    async fn an_echo_is_timed_and_silence_or_nothing_is_an_error() {
        // An endpoint that echoes heartbeats as SPEC §4 asks.
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_address().to_string();
        tokio::spawn(async move {
            loop {
                let Ok(mut s) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 256];
                    let n = s.read(&mut buf).await.unwrap();
                    s.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        let rtt = heartbeat_rtt(&addr, false, None, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(rtt < Duration::from_secs(2));

        // One that accepts and says nothing.
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mute_addr = mute.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let (s, _) = mute.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let err = heartbeat_rtt(&mute_addr, false, None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("no echo within 200 ms"), "{err}");
        held.abort();

        // Nobody at all.
        let closed = rpc_testkit::free_port();
        let err = heartbeat_rtt(
            &format!("127.0.0.1:{closed}"),
            false,
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }
}
