//! Spans per call, exported over OTLP (HTTP, protobuf) when
//! `otlp_endpoint` is set; what a hop of the request path (the proxy, the
//! LB) needs to take part in a trace.
//!
//! A hop holds an `Option<Arc<Tracing>>`: `None` (the default) costs its
//! request path one branch and nothing else. With tracing on, each call
//! gets a [`CallSpan`] from [`Tracing::start_call`], under the
//! `traceparent` the call carried (the caller's decision to sample is
//! followed) or as a new trace sampled at `trace_sample_ratio`. The hop
//! forwards [`CallSpan::traceparent`] (this span as the parent, whether
//! sampled or not, so the next hops follow the same decision) and ends the
//! span with [`CallSpan::end`] when the call is answered.
//!
//! Spans are batched by the SDK's batch processor on a thread of its own,
//! and sent by a small HTTP/1.1 client on a runtime thread of its own, so
//! neither depends on the runtime the hop runs on (which may be
//! single-threaded). [`Tracing::shutdown`] sends what is left; it blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::http::uri::Authority;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;
use tokio::time::Instant;

use crate::Config;

/// Attribute keys of a call's span, the same at every hop.
pub mod attr {
    pub const SYSTEM: &str = "rpc.system";
    pub const SERVICE: &str = "rpc.service";
    pub const METHOD: &str = "rpc.method";
    /// The endpoint (or worker) the call went to.
    pub const PEER: &str = "net.peer";
    /// How the call ended (the hop's outcome label: `ok`, `timeout`, ...).
    pub const OUTCOME: &str = "outcome";
    /// The seqid the call came with.
    pub const SEQID: &str = "seqid";
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Longest an export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest [`Tracing::shutdown`] waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A hop's tracer and exporter.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The same moment on both clocks: span times come from the hop's
    /// monotonic batch clock, not from a wall-clock read per call.
    epoch: (Instant, SystemTime),
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// The tracer `config` asks for (`None` without an `otlp_endpoint`);
    /// `binary` names the spans' service unless `otlp_service_name` does.
    pub fn from_config(
        config: &Config,
        binary: &str,
        version: &str,
    ) -> Result<Option<Arc<Tracing>>, String> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let name = config.otlp_service_name.as_deref().unwrap_or(binary);
        let tracing = Tracing::start(endpoint, name, version, config.trace_sample_ratio)?;
        tracing::info!(endpoint = %tracing_endpoint(endpoint), ratio = config.trace_sample_ratio, "tracing: spans exported over OTLP");
        Ok(Some(Arc::new(tracing)))
    }

    /// Exports spans of `service` to the OTLP/HTTP collector at `endpoint`,
    /// recording the share `ratio` of the traces started here.
    pub fn start(
        endpoint: &str,
        service: &str,
        version: &str,
        ratio: f64,
    ) -> Result<Tracing, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(tracing_endpoint(endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(HttpSender::start(EXPORT_TIMEOUT)?)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("service.version", version.to_string()))
            .build();
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service.to_string());
        Ok(Tracing {
            provider,
            tracer,
            epoch: (Instant::now(), SystemTime::now()),
        })
    }

    /// The span of a call that arrived at `at`, a child of `parent` (the
    /// `traceparent` the call carried) when that is valid.
    pub fn start_call(&self, parent: Option<&str>, at: Instant) -> CallSpan {
        let cx = match parent.and_then(parse_traceparent) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        // Named once the span is known to be recorded (no name is made
        // for the calls not sampled).
        let builder = self
            .tracer
            .span_builder("")
            .with_kind(SpanKind::Server)
            .with_start_time(self.wall(at));
        let span = self.tracer.build_with_context(builder, &cx);
        let traceparent = format_traceparent(span.span_context());
        CallSpan { span, traceparent }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (mono, wall) = self.epoch;
        match at.checked_duration_since(mono) {
            Some(d) => wall + d,
            None => wall - mono.saturating_duration_since(at),
        }
    }

    /// Sends the spans still batched.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "tracing: flush failed");
        }
    }

    /// Sends the spans still batched and stops exporting (blocks up to a
    /// few seconds: call it off the runtime's threads).
    pub fn shutdown(&self) {
        match self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            Ok(()) => tracing::info!("tracing: last spans sent"),
            Err(e) => tracing::warn!(error = %e, "tracing: stopping the exporter failed"),
        }
    }
}

/// `endpoint` with `/v1/traces` when it names no path (OTLP's default).
fn tracing_endpoint(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match rest.find('/') {
        Some(p) if rest.len() > p + 1 => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// One call's span, from arrival to answer.
pub struct CallSpan {
    span: Span,
    traceparent: [u8; TRACEPARENT_LEN],
}

/// What a call's span says when it ends; it is named `service:method`
/// (`method` alone for a name without a service).
pub struct SpanEnd<'a> {
    pub service: &'a [u8],
    pub method: &'a [u8],
    pub peer: Option<&'a str>,
    pub outcome: &'static str,
    pub seqid: i32,
    /// The call failed (anything but the endpoint's REPLY).
    pub error: bool,
}

impl CallSpan {
    /// The context to forward: this span as the next hop's parent.
    pub fn traceparent(&self) -> &str {
        std::str::from_utf8(&self.traceparent).expect("ASCII")
    }

    /// Whether the span is sampled (and so will be exported).
    pub fn is_recording(&self) -> bool {
        self.span.is_recording()
    }

    /// Ends the span at `at` (nothing is made for a span not recorded).
    pub fn end(mut self, tracing: &Tracing, end: SpanEnd<'_>, at: Instant) {
        if !self.span.is_recording() {
            return;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (service, method) = (text(end.service), text(end.method));
        self.span.update_name(match service.is_empty() {
            true => method.clone(),
            false => format!("{service}:{method}"),
        });
        let mut attrs = Vec::with_capacity(6);
        attrs.push(KeyValue::new(attr::SYSTEM, "thrift"));
        attrs.push(KeyValue::new(attr::SERVICE, service));
        attrs.push(KeyValue::new(attr::METHOD, method));
        if let Some(peer) = end.peer {
            attrs.push(KeyValue::new(attr::PEER, peer.to_string()));
        }
        attrs.push(KeyValue::new(attr::OUTCOME, end.outcome));
        attrs.push(KeyValue::new(attr::SEQID, i64::from(end.seqid)));
        self.span.set_attributes(attrs);
        if end.error {
            self.span.set_status(Status::error(end.outcome));
        }
        self.span.end_with_timestamp(tracing.wall(at));
    }
}

/// A W3C `traceparent` as a remote parent; `None` when it is not valid.
/// Versions above 00 are read for their first four parts, as the
/// recommendation says.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let b = s.as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex(&b[0..2])? as u8;
    let tail_ok = match version {
        0 => b.len() == TRACEPARENT_LEN,
        0xff => false,
        _ => b.len() == TRACEPARENT_LEN || b[TRACEPARENT_LEN] == b'-',
    };
    if !tail_ok || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace = hex(&b[3..35])?;
    let span = hex(&b[36..52])? as u64;
    let flags = hex(&b[53..55])? as u8;
    if trace == 0 || span == 0 {
        return None;
    }
    Some(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    ))
}

/// Lowercase hex digits, at most 32.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(v))
    })
}

/// The version-00 `traceparent` of `sc`.
pub fn format_traceparent(sc: &SpanContext) -> [u8; TRACEPARENT_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; TRACEPARENT_LEN];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, byte) in bytes.iter().enumerate() {
            out[at + 2 * i] = DIGITS[usize::from(byte >> 4)];
            out[at + 2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
        }
    };
    put(0, &[0]);
    put(3, &sc.trace_id().to_bytes());
    put(36, &sc.span_id().to_bytes());
    put(
        53,
        &[sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()],
    );
    out
}

/// The exporter's HTTP/1.1 client: one kept-alive connection to the
/// collector, driven by a current-thread runtime on a thread of its own
/// (the batch processor's thread blocks on exports outside any runtime).
#[derive(Debug)]
struct HttpSender {
    rt: tokio::runtime::Handle,
    conn: Arc<Mutex<Option<Kept>>>,
    timeout: Duration,
    /// The last export failed (told once, until one succeeds again).
    failing: AtomicBool,
    /// Dropped with the client (when the exporter stops): ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl HttpSender {
    fn start(timeout: Duration) -> Result<HttpSender, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OTLP client's runtime: {e}"))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-http".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })
            .map_err(|e| format!("cannot start the OTLP client's thread: {e}"))?;
        Ok(HttpSender {
            rt: handle,
            conn: Arc::default(),
            timeout,
            failing: AtomicBool::new(false),
            _stop: stop,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for HttpSender {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (conn, timeout) = (self.conn.clone(), self.timeout);
        let exchange = async move {
            match tokio::time::timeout(timeout, exchange(&conn, request)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        };
        let result = self.rt.spawn(exchange).await?;
        let failure = match &result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        let failing = failure.is_some();
        match (failure, self.failing.swap(failing, Ordering::Relaxed)) {
            (Some(error), false) => tracing::warn!(%error, "tracing: cannot export spans"),
            (None, true) => tracing::info!("tracing: exporting spans again"),
            _ => {}
        }
        result
    }
}

/// A connection kept for the next export, and where it goes.
type Kept = (Authority, SendRequest<Full<Bytes>>);

/// One request on the kept connection, or on a new one when there is
/// none, or it closed before taking the request (a collector may close an
/// idle connection at any time).
async fn exchange(
    kept: &Mutex<Option<Kept>>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts.uri.authority().ok_or("no host in the URL")?.clone();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse()?;
    parts.headers.insert(HOST, authority.as_str().parse()?);
    let mut request = Request::from_parts(parts, Full::new(body));
    let taken = kept.lock().unwrap_or_else(PoisonError::into_inner).take();
    let reusable = taken.filter(|(to, s)| *to == authority && !s.is_closed());
    if let Some((_, mut sender)) = reusable {
        if sender.ready().await.is_ok() {
            match sender.try_send_request(request).await {
                Ok(response) => return keep(kept, (authority, sender), response).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
    }
    let mut sender = connect(&authority).await?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    keep(kept, (authority, sender), response).await
}

/// Reads the whole response, then keeps the connection for the next one.
async fn keep(
    kept: &Mutex<Option<Kept>>,
    connection: Kept,
    response: Response<hyper::body::Incoming>,
) -> Result<Response<Bytes>, HttpError> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    *kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection);
    Ok(Response::from_parts(parts, body))
}

async fn connect(authority: &Authority) -> Result<SendRequest<Full<Bytes>>, HttpError> {
    let addr = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "tracing: collector connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id(),
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)
        );
        assert_eq!(&format_traceparent(&sc)[..], tp.as_bytes());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().is_sampled());
        // A later version: its first four parts, more may follow.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(v1).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn otlp_path_is_added_only_when_none_is_given() {
        assert_eq!(tracing_endpoint("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(
            tracing_endpoint("http://c:4318/"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(tracing_endpoint("http://c:4318/x/y"), "http://c:4318/x/y");
    }

    /// A collector on a plain thread: answers 200 to every POST, closing
    /// each connection after its second request; counts requests and
    /// connections.
    fn collector() -> (String, Arc<Mutex<(usize, usize)>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new((0, 0)));
        let counts = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = BufReader::new(conn.unwrap());
                counts.lock().unwrap().1 += 1;
                for n in 1..=2 {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).unwrap() == 0 {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    conn.read_exact(&mut body).unwrap();
                    counts.lock().unwrap().0 += 1;
                    let close = if n == 2 { "Connection: close\r\n" } else { "" };
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{close}\r\n");
                    conn.get_mut().write_all(answer.as_bytes()).unwrap();
                }
            }
        });
        (url, seen)
    }

    #[test]
    fn exports_from_a_thread_outside_any_runtime_on_kept_connections() {
        let (url, seen) = collector();
        let sender = HttpSender::start(Duration::from_secs(5)).unwrap();
        for _ in 0..5 {
            let request = Request::post(&url)
                .header("content-type", "application/x-protobuf")
                .body(Bytes::from_static(b"spans"))
                .unwrap();
            // As the batch processor's thread does.
            let response = futures::executor::block_on(sender.send_bytes(request)).unwrap();
            assert_eq!(response.status(), 200);
        }
        // Two requests per connection, then a new one.
        assert_eq!(*seen.lock().unwrap(), (5, 3));
        assert!(!sender.failing.load(Ordering::Relaxed));
        // Nobody listening: the export fails, and is told once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", closed.local_addr().unwrap());
        drop(closed);
        let request = Request::post(&url).body(Bytes::new()).unwrap();
        assert!(futures::executor::block_on(sender.send_bytes(request)).is_err());
        assert!(sender.failing.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn calls_follow_their_parent_or_the_ratio() {
        let off = Tracing::start("http://127.0.0.1:9", "t", "0", 0.0).unwrap();
        let now = Instant::now();
        let root = off.start_call(None, now);
        assert!(!root.is_recording());
        let sc = parse_traceparent(root.traceparent()).expect("valid context");
        assert!(!sc.is_sampled(), "the decision travels on");
        // A sampled caller is followed whatever the ratio.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = off.start_call(Some(tp), now);
        assert!(child.is_recording());
        let sc = parse_traceparent(child.traceparent()).unwrap();
        assert_eq!(sc.trace_id(), parse_traceparent(tp).unwrap().trace_id());
        assert_ne!(sc.span_id(), parse_traceparent(tp).unwrap().span_id());
        let on = Tracing::start("http://127.0.0.1:9", "t", "0", 1.0).unwrap();
        assert!(on.start_call(None, now).is_recording());
        assert!(on.start_call(Some("garbage"), now).is_recording());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!on.start_call(Some(unsampled), now).is_recording());
        tokio::task::spawn_blocking(move || {
            off.provider
                .shutdown_with_timeout(Duration::from_millis(100))
                .ok();
            on.provider
                .shutdown_with_timeout(Duration::from_millis(100))
                .ok();
        })
        .await
        .unwrap();
    }
}
