//! An OTLP/HTTP trace receiver on loopback (feature `otlp`): what the hops
//! export when `otlp_endpoint` is set, decoded, to assert on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
pub use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message as _;

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }
}

/// Starts a receiver; its base URL (for `otlp_endpoint`) and what it gets.
pub async fn receiver() -> (String, Received) {
    use axum::{body::Bytes, extract::State, routing::post, Router};
    async fn traces(State(got): State<Received>, body: Bytes) -> &'static [u8] {
        let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
        for rs in req.resource_spans {
            let resource = rs.resource.unwrap_or_default();
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(value)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.0.lock().unwrap().push((service.clone(), span));
                }
            }
        }
        // An empty ExportTraceServiceResponse.
        b""
    }
    let got = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn value(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The span's attributes as text.
pub fn attrs(span: &Span) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), value(kv)?)))
        .collect()
}

/// Ids as a `traceparent` writes them.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (trace id, span id, flags) of a `traceparent`.
pub fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!((p.len(), p[0]), (4, "00"), "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}
