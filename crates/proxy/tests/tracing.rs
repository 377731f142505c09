//! Spans per call (`otlp_endpoint`): a real proxy exporting to an OTLP/HTTP
//! receiver started here, and the trace context the endpoint gets in the
//! call's trace field; without tracing, the endpoint gets the client's
//! bytes.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use common::*;
use futures::{SinkExt, StreamExt};
use rpc_codec::{
    encode_message, trace_field, with_trace_field, FrameCodec, Message, MessageType, TRACE_FIELD_ID,
};
use rpc_testkit::otlp::{
    attrs, hex, parts, receiver as otlp_receiver, Received, Span, SpanKind, StatusCode,
};
use rpc_transport::Listener;
use tokio_util::codec::Framed;

/// `1: string "hi"`, STOP: the arguments of every call here.
const ARGS: &[u8] = &[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 0];

/// The trace field as encoded in a struct.
fn field(tp: &str) -> Vec<u8> {
    let mut f = vec![11];
    f.extend_from_slice(&TRACE_FIELD_ID.to_be_bytes());
    f.extend_from_slice(&(tp.len() as i32).to_be_bytes());
    f.extend_from_slice(tp.as_bytes());
    f
}

/// [`ARGS`] carrying `tp` as its only trace field.
fn args_with(tp: &str) -> Vec<u8> {
    let mut b = ARGS[..ARGS.len() - 1].to_vec();
    b.extend(field(tp));
    b.push(0);
    b
}

/// The trace field of an argument struct the endpoint got (echoed back).
fn trace_of(body: &[u8]) -> String {
    let m = Message::parse(encode_message(MessageType::Call, b"m", 0, body)).unwrap();
    trace_field(&m).expect("a trace field").to_string()
}

const CLIENT_TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn traced_proxy(
    ep: &TestEndpoint,
    extra: &str,
) -> (rpc_proxy::ProxyHandle, Client, Received) {
    let (url, got) = otlp_receiver().await;
    let reg = MemRegistry::new();
    reg.set("echo", vec![ep.endpoint("echo")]);
    let config = test_config(&format!("otlp_endpoint={url}\nrpc_timeout=1\n{extra}"));
    let (proxy, addr) = start_proxy(&config, Arc::new(reg)).await;
    (proxy, Client::connect(&addr).await, got)
}

#[tokio::test]
async fn every_call_gets_one_span_and_the_endpoint_gets_its_context() {
    let ep = TestEndpoint::start("a").await;
    let (proxy, mut c, got) = traced_proxy(&ep, "").await;

    // A call without trace context starts a trace; the endpoint gets the
    // arguments with the proxy's span as parent (echoed back to us).
    let r = c.call("echo:echo", 11, ARGS).await;
    assert_eq!(r.kind(), MessageType::Reply);
    let tp1 = trace_of(r.body());
    assert_eq!(r.body(), &args_with(&tp1)[..]);
    assert_eq!(parts(&tp1).2, "01", "sampled");

    // A call that carries a context continues it, and the endpoint gets
    // one trace field: the proxy's.
    let r = c.call("echo:echo", 12, &args_with(CLIENT_TP)).await;
    let tp2 = trace_of(r.body());
    assert_eq!(r.body(), &args_with(&tp2)[..]);
    assert_eq!(parts(&tp2).0, parts(CLIENT_TP).0, "same trace");
    assert_ne!(parts(&tp2).1, parts(CLIENT_TP).1, "the proxy's own span");

    // Answered by the proxy itself; a oneway call; a timeout.
    assert_eq!(
        c.call("nosuch:x", 13, ARGS).await.kind(),
        MessageType::Exception
    );
    c.send(MessageType::Oneway, "echo:note", 14, ARGS).await;
    let (_, timeout) = exception_text(&c.call("echo:hang", 15, ARGS).await);
    assert!(timeout.contains("Timeout"), "{timeout}");
    let oneway = ep.oneways.lock().unwrap()[0].clone();
    let tp4 = trace_of(&oneway);

    // A graceful stop sends the spans still batched.
    proxy.shutdown().await;
    let spans = got.spans();
    assert_eq!(spans.len(), 5, "one span per call: {spans:#?}");
    let by_seqid: BTreeMap<String, (String, Span)> = spans
        .into_iter()
        .map(|(service, s)| (attrs(&s)["seqid"].clone(), (service, s)))
        .collect();
    let peer = ep.address.to_string();
    let expect = [
        ("11", "echo:echo", "ok", Some(&tp1)),
        ("12", "echo:echo", "ok", Some(&tp2)),
        ("13", "nosuch:x", "unknown_service", None),
        ("14", "echo:note", "oneway", Some(&tp4)),
        ("15", "echo:hang", "timeout", None),
    ];
    for (seqid, name, outcome, forwarded) in expect {
        let (service, span) = &by_seqid[seqid];
        let a = attrs(span);
        assert_eq!(service, "rpc-proxy");
        assert_eq!(span.name, name);
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(a["rpc.system"], "thrift");
        let (svc, method) = name.split_once(':').unwrap();
        assert_eq!(
            (a["rpc.service"].as_str(), a["rpc.method"].as_str()),
            (svc, method)
        );
        assert_eq!(a["outcome"], outcome, "{name}");
        assert_eq!(a.contains_key("net.peer"), outcome != "unknown_service");
        if let Some(p) = a.get("net.peer") {
            assert_eq!(p, &peer);
        }
        let error = span.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32);
        assert_eq!(error, !matches!(outcome, "ok" | "oneway"), "{name}");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        // What the endpoint got names this very span.
        if let Some(tp) = forwarded {
            let (trace, span_id, _) = parts(tp);
            assert_eq!((hex(&span.trace_id), hex(&span.span_id)), (trace, span_id));
        }
    }
    let continued = &by_seqid["12"].1;
    assert_eq!(hex(&continued.parent_span_id), parts(CLIENT_TP).1);
    assert!(by_seqid["11"].1.parent_span_id.is_empty(), "a root span");
    let hang = &by_seqid["15"].1;
    assert!(hang.end_time_unix_nano - hang.start_time_unix_nano >= 900_000_000);
}

#[tokio::test]
async fn traces_not_sampled_carry_the_decision_and_export_nothing() {
    let ep = TestEndpoint::start("a").await;
    let (proxy, mut c, got) = traced_proxy(&ep, "trace_sample_ratio=0").await;
    for seqid in 0..20 {
        let r = c.call("echo:echo", seqid, ARGS).await;
        assert_eq!(parts(&trace_of(r.body())).2, "00", "not sampled");
    }
    // A sampled caller is followed whatever the ratio.
    let r = c.call("echo:echo", 99, &args_with(CLIENT_TP)).await;
    assert_eq!(parts(&trace_of(r.body())).2, "01");
    proxy.shutdown().await;
    let spans = got.spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(attrs(&spans[0].1)["seqid"], "99");
}

/// An endpoint that keeps every frame it gets and echoes calls.
async fn recording_endpoint() -> (rpc_transport::Address, Arc<Mutex<Vec<BytesMut>>>) {
    let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_address();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let kept = frames.clone();
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut io = Framed::new(stream, FrameCodec::default());
                while let Some(Ok(frame)) = io.next().await {
                    let msg = Message::parse(frame.clone()).unwrap();
                    let answer = match msg.kind() {
                        MessageType::Heartbeat => frame,
                        _ => {
                            kept.lock().unwrap().push(frame);
                            let (name, seqid) = (msg.name(), msg.seqid());
                            encode_message(MessageType::Reply, name, seqid, msg.body())
                        }
                    };
                    if io.send(answer.freeze()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (address, frames)
}

#[tokio::test]
async fn without_tracing_the_endpoint_gets_the_clients_bytes() {
    let (address, frames) = recording_endpoint().await;
    let reg = MemRegistry::new();
    reg.set(
        "echo",
        vec![rpc_registry::Endpoint::new("echo", &address.to_string())],
    );
    let (_proxy, addr) = start_proxy(&test_config(""), Arc::new(reg)).await;
    let mut c = Client::connect(&addr).await;
    // With and without a client's trace field: neither is touched.
    let traced = with_trace_field(
        Message::parse(encode_message(MessageType::Call, b"m", 0, ARGS)).unwrap(),
        CLIENT_TP,
    );
    for (seqid, body) in [(1, ARGS), (2, traced.body())] {
        let r = c.call("echo:echo", seqid, body).await;
        assert_eq!(r.body(), body);
        let got = frames
            .lock()
            .unwrap()
            .pop()
            .expect("the endpoint got the call");
        // The client's frame, less `echo:` in the name, with the proxy's seqid.
        let proxy_seqid = Message::parse(got.clone()).unwrap().seqid();
        let want = encode_message(MessageType::Call, b"echo", proxy_seqid, body);
        assert_eq!(&got[..], &want[..]);
    }
}
