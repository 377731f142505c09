//! TLS on a hop: handshake, frames both ways, refusals, reloads.

use std::time::Duration;

use bytes::Bytes;
use rpc_codec::FrameCodec;
use rpc_testkit::tls::TestCa;
use rpc_transport::tls::{TlsClient, TlsFiles, TlsServer};
use rpc_transport::{Address, FrameReader, FrameWriter, Listener, Stream};

fn frame(body: &[u8]) -> Bytes {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f.into()
}

/// A server that accepts one TLS connection at a time and echoes frames;
/// handshake errors go to the channel.
async fn echo_server(
    tls: std::sync::Arc<TlsServer>,
) -> (Address, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = Listener::bind(&Address::Tcp("127.0.0.1:0".into()))
        .await
        .unwrap();
    let addr = l.local_address();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let s = l.accept().await.unwrap();
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let s = match tls.accept(s).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(e.to_string());
                        return;
                    }
                };
                assert!(s.is_tls());
                let (r, w) = s.into_split();
                let mut reader = FrameReader::new(r, FrameCodec::default());
                let mut writer = FrameWriter::new(w);
                while let Some(Ok(f)) = reader.next().await {
                    writer.push(frame(&f[4..]));
                    writer.flush().await.unwrap();
                }
            });
        }
    });
    (addr, rx)
}

/// Sends a frame and waits for its echo.
async fn round_trip(s: Stream, body: &[u8]) -> std::io::Result<Stream> {
    let (r, w) = s.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::default());
    let mut writer = FrameWriter::new(w);
    writer.push(frame(body));
    writer.flush().await?;
    let got = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("echo in time");
    match got {
        Some(Ok(f)) => assert_eq!(&f[4..], body),
        Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
    let (r, _) = reader.into_parts();
    Stream::reunite(r, writer.into_inner())
}

#[tokio::test]
async fn a_mutual_handshake_carries_frames_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let server = TlsServer::new(&ca.server("endpoint")).unwrap();
    let client = TlsClient::new(&ca.client("proxy")).unwrap();
    let (addr, _errors) = echo_server(server).await;
    let s = client.connect(&addr).await.unwrap();
    assert!(s.is_tls());
    let s = round_trip(s, b"hello").await.unwrap();
    // Many frames in one write, and a large one.
    let s = round_trip(s, &vec![7u8; 300_000]).await.unwrap();
    round_trip(s, b"again").await.unwrap();
}

#[tokio::test]
async fn a_client_signed_by_another_ca_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let other = TestCa::new(dir.path(), "other");
    let server = TlsServer::new(&ca.server("endpoint")).unwrap();
    // Trusts the fleet's endpoints, but its own certificate is the other CA's.
    let files = other.client_trusting("intruder", &ca);
    let client = TlsClient::new(&files).unwrap();
    let (addr, mut errors) = echo_server(server).await;
    // TLS 1.3: the client finishes first; the server's refusal arrives as
    // an alert on the first read at the latest.
    let outcome = match client.connect(&addr).await {
        Ok(s) => round_trip(s, b"hi").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "a foreign client certificate was accepted"
    );
    let logged = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(logged.contains("127.0.0.1:"), "names the peer: {logged}");
    assert!(logged.contains("TLS handshake"), "{logged}");
}

#[tokio::test]
async fn an_endpoint_signed_by_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let other = TestCa::new(dir.path(), "other");
    let mut files = other.server("impostor");
    files.client_ca = Some(ca.ca_file());
    let (addr, _errors) = echo_server(TlsServer::new(&files).unwrap()).await;
    let client = TlsClient::new(&ca.client("proxy")).unwrap();
    let e = client.connect(&addr).await.unwrap_err().to_string();
    assert!(
        e.contains(&addr.to_string()) && e.contains("certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn a_plain_client_gets_nothing_from_a_tls_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let (addr, mut errors) = echo_server(TlsServer::new(&ca.server("endpoint")).unwrap()).await;
    let plain = Stream::connect(&addr).await.unwrap();
    assert!(round_trip(plain, b"hi").await.is_err());
    let logged = errors.recv().await.unwrap();
    assert!(logged.contains("TLS handshake with 127.0.0.1:"), "{logged}");
}

#[tokio::test]
async fn a_reload_serves_new_connections_with_the_new_files() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestCa::new(dir.path(), "old");
    let new = TestCa::new(dir.path(), "new");
    let files = old.server("endpoint");
    let server = TlsServer::new(&files).unwrap();
    let (addr, _errors) = echo_server(server.clone()).await;
    let old_client = TlsClient::new(&old.client("proxy")).unwrap();
    let new_client = TlsClient::new(&new.client("proxy")).unwrap();
    let open = round_trip(old_client.connect(&addr).await.unwrap(), b"1")
        .await
        .unwrap();

    // Same paths, the new CA's certificates.
    let fresh = new.server("endpoint2");
    for (from, to) in [
        (&fresh.cert, &files.cert),
        (&fresh.key, &files.key),
        (&fresh.client_ca, &files.client_ca),
    ] {
        std::fs::copy(from.as_ref().unwrap(), to.as_ref().unwrap()).unwrap();
    }
    server.reload().unwrap();
    round_trip(new_client.connect(&addr).await.unwrap(), b"2")
        .await
        .unwrap();
    assert!(old_client.connect(&addr).await.is_err());
    // The connection opened before keeps its session.
    round_trip(open, b"3").await.unwrap();

    // A broken file: the reload fails and the current files stay.
    std::fs::write(files.key.as_ref().unwrap(), "garbage").unwrap();
    let e = server.reload().unwrap_err().to_string();
    assert!(e.contains("tls_key_file"), "{e}");
    round_trip(new_client.connect(&addr).await.unwrap(), b"4")
        .await
        .unwrap();
}

#[test]
fn files_are_checked_with_errors_that_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "fleet");
    let good = ca.server("endpoint");
    good.validate().unwrap();
    ca.client("proxy").validate().unwrap();

    // The key of another certificate.
    let (_, other_key) = ca.issue("other", &["127.0.0.1"]);
    let mismatched = TlsFiles {
        key: Some(other_key),
        ..good.clone()
    };
    let e = mismatched.validate().unwrap_err().to_string();
    assert!(
        e.contains("tls_key_file") && e.contains("does not match"),
        "{e}"
    );

    let missing = TlsFiles {
        cert: Some(dir.path().join("nope.pem")),
        ..good.clone()
    };
    let e = missing.validate().unwrap_err().to_string();
    assert!(
        e.contains("tls_cert_file") && e.contains("cannot read"),
        "{e}"
    );

    let not_pem = dir.path().join("junk.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let junk_ca = TlsFiles {
        client_ca: Some(not_pem),
        ..good.clone()
    };
    let e = junk_ca.validate().unwrap_err().to_string();
    assert!(
        e.contains("tls_client_ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );

    let no_key = TlsFiles { key: None, ..good };
    let e = no_key.validate().unwrap_err().to_string();
    assert!(e.contains("tls_key_file") && e.contains("missing"), "{e}");
}
