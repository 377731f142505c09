//! Spans per hop (`otlp_endpoint` on the proxy and the LB): client →
//! rpc-proxy → rpc-lb → worker, one trace, each hop's span the child of the
//! one before, and the worker getting the LB's span as its parent.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use rpc_codec::{encode_message, trace_field, with_trace_field, Message, MessageType};
use rpc_testkit::otlp::{self, attrs, hex, parts, Span, StatusCode};

/// `1: string "hi"`, STOP: the arguments of every call here.
const ARGS: &[u8] = &[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 0];
const CLIENT_TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn traced(body: &[u8], tp: &str) -> Vec<u8> {
    let m = Message::parse(encode_message(MessageType::Call, b"m", 0, body)).unwrap();
    with_trace_field(m, tp).body().to_vec()
}

/// The trace field of an argument struct a worker got.
fn trace_of(body: &[u8]) -> String {
    let m = Message::parse(encode_message(MessageType::Call, b"m", 0, body)).unwrap();
    trace_field(&m).expect("a trace field").to_string()
}

#[tokio::test]
async fn each_hop_has_a_span_under_the_one_before_and_the_worker_gets_the_lbs() {
    let (url, got) = otlp::receiver().await;
    let tracing = format!("otlp_endpoint={url}\n");
    let (lb, reg) = start_lb(&format!("{tracing}rpc_timeout=1")).await;
    let w = workers(&lb, &["a"], 4).await;
    eventually("LB registered", || reg.endpoints("echo").len() == 1).await;
    let mut config = rpc_config::Config::parse(&format!("{tracing}rpc_timeout=5")).unwrap();
    config.proxy_address = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = rpc_proxy::start(&config, Arc::new(reg.clone()))
        .await
        .expect("proxy starts");
    let mut c = Client::connect(&proxy.addresses()[0]).await;

    // A call continuing the client's trace, a oneway, a call the worker
    // never answers (the LB times it out).
    let r = c.call("echo:echo", 1, &traced(ARGS, CLIENT_TP)).await;
    assert_eq!(r.kind(), MessageType::Reply);
    c.send(
        MessageType::Oneway,
        "echo:note",
        2,
        &traced(ARGS, CLIENT_TP),
    )
    .await;
    let r = c.call("echo:block", 3, &traced(ARGS, CLIENT_TP)).await;
    let (_, text) = exception_text(&r);
    assert!(text.contains("imeout"), "{text}");
    eventually("the oneway reached the worker", || {
        w[0].state.oneways.lock().unwrap().len() == 1
    })
    .await;
    let worker_got = [
        w[0].state.bodies.lock().unwrap()[0].clone(),
        w[0].state.oneways.lock().unwrap()[0].clone(),
    ];

    // Stopping sends what each hop still batches.
    proxy.shutdown().await;
    w[0].release(1);
    lb.stop().await;
    let spans = got.spans();
    assert_eq!(spans.len(), 6, "a span per call per hop: {spans:#?}");
    let hop = |name: &'static str| {
        spans
            .iter()
            .filter(move |(svc, _)| svc == name)
            .map(|(_, s)| s)
    };
    // The client's seqids name the proxy's spans.
    let proxy_spans: BTreeMap<String, &Span> = hop("rpc-proxy")
        .map(|s| (attrs(s)["seqid"].clone(), s))
        .collect();
    assert_eq!(proxy_spans.len(), 3, "{spans:#?}");

    let client = parts(CLIENT_TP);
    let calls = [
        ("1", "echo", "ok", Some(&worker_got[0])),
        ("2", "note", "oneway", Some(&worker_got[1])),
        ("3", "block", "timeout", None),
    ];
    for (seqid, method, outcome, at_worker) in calls {
        let p = proxy_spans[seqid];
        // The LB sees the proxy's seqids, not the client's: its span is the
        // one whose parent is this proxy span.
        let l = hop("rpc-lb")
            .find(|s| s.parent_span_id == p.span_id)
            .unwrap_or_else(|| panic!("no LB span under the proxy's span of call {seqid}"));
        assert_eq!(hex(&p.trace_id), client.0, "one trace");
        assert_eq!(hex(&l.trace_id), client.0, "one trace");
        assert_eq!(hex(&p.parent_span_id), client.1);
        let a = attrs(l);
        assert_eq!(l.name, format!("echo:{method}"));
        assert_eq!(
            (a["rpc.service"].as_str(), a["rpc.method"].as_str()),
            ("echo", method)
        );
        assert_eq!(a["outcome"], outcome, "call {seqid}");
        let error = l.status.as_ref().map(|s| s.code) == Some(StatusCode::Error as i32);
        assert_eq!(error, outcome == "timeout");
        if let Some(body) = at_worker {
            // What the worker got names the LB's span.
            let tp = parts(&trace_of(body));
            assert_eq!((tp.0, tp.1), (hex(&l.trace_id), hex(&l.span_id)));
        }
    }
}
