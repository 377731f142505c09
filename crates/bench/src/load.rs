//! The load generator: connections that send framed calls and check every
//! reply.
//!
//! Each connection is one task that owns its socket, its in-flight table
//! and its histograms; nothing is shared on the request path but a few
//! relaxed counters for the progress line. Replies are read many per
//! wake-up (`FrameReader`), and new requests are queued into a
//! `FrameWriter` and written together with one vectored write once the
//! socket has nothing more to read.
//!
//! Closed loop keeps `depth` requests in flight on every connection. Open
//! loop sends at a fixed rate and measures each latency from the request's
//! *intended* send time, so a stall of the path shows in full in the
//! percentiles instead of quietly slowing the generator down
//! (coordinated omission). Only the timer's own lateness ([`TIMER_SLACK`],
//! millisecond timer resolution) is not charged to the path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use rpc_codec::{FrameCodec, Message, MessageType};
use rpc_transport::{Address, FrameReader, FrameWriter, Stream, WriteHalf};
use tokio::time::Instant;

use crate::report::{new_histogram, Counts, Latency, Live, Report, HIST_MAX_US};
use crate::wire::{self, Method, FAIL_MESSAGE};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Address,
    /// Service name put before each method (`service:method`).
    pub service: String,
    /// Talk straight to a service: bare method names, no prefix.
    pub direct: bool,
    pub connections: usize,
    /// Closed loop: requests kept in flight on each connection.
    pub depth: usize,
    /// Open loop: total requests per second over all connections.
    pub rate: Option<f64>,
    /// Bytes of `data` per call.
    pub payload: usize,
    /// Share of calls to `sleep`.
    pub slow_fraction: f64,
    pub slow_ms: u32,
    /// Share of calls to `fail` (answered with an exception on purpose).
    pub fail_fraction: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request without a reply for this long is lost.
    pub timeout: Duration,
    /// Extra connections opened before the run and held idle.
    pub idle_connections: usize,
    /// Bytes of a frame each idle connection sends before falling silent
    /// (a peer stalled mid-frame: 0 sends nothing).
    pub idle_partial: usize,
    /// Open loop: most requests in flight on one connection.
    pub max_outstanding: usize,
    pub max_frame: usize,
    /// Runtime worker threads (reported; the caller builds the runtime).
    pub threads: usize,
    /// Unexpected exceptions do not fail the run.
    pub allow_exceptions: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            target: Address::Tcp("127.0.0.1:5550".into()),
            service: "bench".into(),
            direct: false,
            connections: 4,
            depth: 8,
            rate: None,
            payload: 64,
            slow_fraction: 0.0,
            slow_ms: 50,
            fail_fraction: 0.0,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            idle_connections: 0,
            idle_partial: 0,
            max_outstanding: 100_000,
            max_frame: rpc_codec::DEFAULT_MAX_FRAME,
            threads: 1,
            allow_exceptions: false,
        }
    }
}

impl LoadConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!(self.depth >= 1, "--depth must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.slow_fraction)
                && (0.0..=1.0).contains(&self.fail_fraction)
                && self.slow_fraction + self.fail_fraction <= 1.0,
            "--slow-fraction and --fail-fraction must be in [0, 1] and add up to at most 1"
        );
        if let Some(r) = self.rate {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
        }
        anyhow::ensure!(
            self.max_outstanding >= 1,
            "--max-outstanding must be at least 1"
        );
        anyhow::ensure!(!self.timeout.is_zero(), "--timeout must be positive");
        let frame = wire::call_frame_len(
            format!("{}:", self.service).as_bytes(),
            Method::Sleep,
            self.payload,
        );
        anyhow::ensure!(
            frame <= self.max_frame,
            "--payload {} makes {frame}-byte frames, above --max-frame {}",
            self.payload,
            self.max_frame
        );
        Ok(())
    }
}

/// Read-only state of one run, shared by its connections.
struct Shared {
    cfg: LoadConfig,
    prefix: Vec<u8>,
    fill: Vec<u8>,
    start: Instant,
    warm_end: Instant,
    end: Instant,
    /// Open loop: time between two sends on one connection.
    interval: Option<Duration>,
}

/// Per-connection results, merged at the end.
struct ConnResult {
    counts: Counts,
    fast: Histogram<u64>,
    slow: Histogram<u64>,
    measured: u64,
    errors: Vec<String>,
}

struct Pending {
    start: Instant,
    method: Method,
}

/// Error samples kept per connection.
const MAX_ERRORS: usize = 10;
/// Requests' frames are cut from buffers of at least this size.
const ARENA: usize = 64 * 1024;
/// Open loop: lateness of a send that is blamed on the timer, not the path.
pub const TIMER_SLACK: Duration = Duration::from_millis(2);
/// How often requests are checked for expiry.
const SCAN: Duration = Duration::from_millis(100);

/// Runs the load and returns the judged report. Fails only if the target
/// cannot be reached at the start.
pub async fn run(cfg: LoadConfig, live: Arc<Live>) -> anyhow::Result<Report> {
    cfg.validate()?;
    let mut streams = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let s = connect(&cfg.target, cfg.timeout)
            .await
            .map_err(|e| anyhow::anyhow!("connection {i} to {}: {e}", cfg.target))?;
        streams.push(s);
    }
    let idle = open_idle(&cfg).await;
    let idle_open = idle.len();

    let start = Instant::now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r));
    let prefix = if cfg.direct {
        Vec::new()
    } else {
        format!("{}:", cfg.service).into_bytes()
    };
    let shared = Arc::new(Shared {
        fill: wire::fill(cfg.payload),
        prefix,
        cfg: cfg.clone(),
        start,
        warm_end,
        end,
        interval,
    });
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let conn = Conn::new(i as u32, shared.clone(), live.clone());
            tokio::spawn(conn.run(s))
        })
        .collect();

    let mut counts = Counts::default();
    let mut fast = new_histogram();
    let mut slow = new_histogram();
    let mut measured = 0;
    let mut errors = Vec::new();
    for t in tasks {
        let r = t.await?;
        counts.add(&r.counts);
        fast.add(&r.fast).expect("same histogram bounds");
        slow.add(&r.slow).expect("same histogram bounds");
        measured += r.measured;
        for e in r.errors {
            if errors.len() < 2 * MAX_ERRORS {
                errors.push(e);
            }
        }
    }
    drop(idle);
    let mut all = fast.clone();
    all.add(&slow).expect("same histogram bounds");
    let secs = cfg.duration.as_secs_f64();
    let mut report = Report {
        target: cfg.target.to_string(),
        direct: cfg.direct,
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
        connections: cfg.connections,
        depth: cfg.depth,
        rate: cfg.rate,
        payload: cfg.payload,
        slow_fraction: cfg.slow_fraction,
        slow_ms: cfg.slow_ms,
        fail_fraction: cfg.fail_fraction,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: secs,
        threads: cfg.threads,
        idle_connections: cfg.idle_connections,
        idle_connections_open: idle_open,
        counts,
        measured,
        throughput_rps: if secs > 0.0 {
            (measured as f64 / secs).round()
        } else {
            0.0
        },
        latency: Latency::from_histogram(&all),
        latency_fast: Latency::from_histogram(&fast),
        latency_slow: Latency::from_histogram(&slow),
        errors,
        passed: false,
    };
    report.judge(cfg.allow_exceptions);
    Ok(report)
}

async fn connect(addr: &Address, limit: Duration) -> std::io::Result<Stream> {
    match tokio::time::timeout(limit, Stream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Opens the idle connections, a few hundred at a time; each sends the
/// first `idle_partial` bytes of a call, if any.
async fn open_idle(cfg: &LoadConfig) -> Vec<Stream> {
    use tokio::io::AsyncWriteExt;
    let name = format!("{}:echo", cfg.service);
    let call = rpc_codec::encode_message(rpc_codec::MessageType::Call, name.as_bytes(), 1, &[0]);
    let start = &call[..cfg.idle_partial.min(call.len() - 1)];
    let mut out = Vec::with_capacity(cfg.idle_connections);
    let mut failed = 0usize;
    let mut left = cfg.idle_connections;
    while left > 0 {
        let n = left.min(256);
        let batch = futures::future::join_all((0..n).map(|_| connect(&cfg.target, cfg.timeout)));
        for r in batch.await {
            let r = match r {
                Ok(mut s) if !start.is_empty() => s.write_all(start).await.map(|()| s),
                r => r,
            };
            match r {
                Ok(s) => out.push(s),
                Err(e) => {
                    if failed == 0 {
                        tracing::warn!("idle connection failed: {e}");
                    }
                    failed += 1;
                }
            }
        }
        left -= n;
    }
    out
}

/// Why a session ended.
enum End {
    /// The run is over and every request has its verdict.
    Done,
    /// The connection broke; the run goes on over a new one.
    Broken(String),
}

struct Conn {
    id: u32,
    sh: Arc<Shared>,
    live: Arc<Live>,
    rng: u64,
    next_seqid: i32,
    pending: HashMap<i32, Pending>,
    /// Seqids counted lost, so a late reply is told from a wrong one.
    expired: HashSet<i32>,
    arena: BytesMut,
    /// Open loop: index of the next request to send.
    next_k: u64,
    counts: Counts,
    fast: Histogram<u64>,
    slow: Histogram<u64>,
    measured: u64,
    errors: Vec<String>,
}

impl Conn {
    fn new(id: u32, sh: Arc<Shared>, live: Arc<Live>) -> Conn {
        let cap = if sh.cfg.rate.is_some() {
            1024
        } else {
            sh.cfg.depth * 2
        };
        Conn {
            id,
            live,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (u64::from(id) + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            next_seqid: 1,
            pending: HashMap::with_capacity(cap),
            expired: HashSet::new(),
            arena: BytesMut::new(),
            next_k: 0,
            counts: Counts::default(),
            fast: new_histogram(),
            slow: new_histogram(),
            measured: 0,
            errors: Vec::new(),
            sh,
        }
    }

    async fn run(mut self, first: Stream) -> ConnResult {
        let mut stream = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let s = match stream.take() {
                Some(s) => s,
                None => {
                    if Instant::now() >= self.sh.end {
                        break;
                    }
                    match connect(&self.sh.cfg.target, self.sh.cfg.timeout).await {
                        Ok(s) => {
                            backoff = Duration::from_millis(50);
                            s
                        }
                        Err(e) => {
                            self.error(format!("reconnect: {e}"));
                            tokio::time::sleep(backoff.min(self.sh.end - Instant::now())).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                            continue;
                        }
                    }
                }
            };
            match self.session(s).await {
                End::Done => break,
                End::Broken(why) => {
                    self.error(format!("connection {}: {why}", self.id));
                    self.lose_all();
                    if Instant::now() < self.sh.end {
                        self.counts.reconnects += 1;
                        self.live.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.lose_all();
        ConnResult {
            counts: self.counts,
            fast: self.fast,
            slow: self.slow,
            measured: self.measured,
            errors: self.errors,
        }
    }

    async fn session(&mut self, s: Stream) -> End {
        let (r, w) = s.into_split();
        let mut reader = FrameReader::new(r, FrameCodec::new(self.sh.cfg.max_frame));
        let mut writer = FrameWriter::new(w);
        let end = self.sh.end;
        let open = self.sh.interval.is_some();
        let end_timer = tokio::time::sleep_until(end);
        tokio::pin!(end_timer);
        let due_timer = tokio::time::sleep_until(self.due());
        tokio::pin!(due_timer);
        let mut scan = tokio::time::interval(SCAN);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.top_up(&mut writer, Instant::now());
        loop {
            let now = Instant::now();
            let sending = now < end;
            if !sending && self.pending.is_empty() && writer.is_empty() {
                return End::Done;
            }
            let may_send = open && sending && self.pending.len() < self.sh.cfg.max_outstanding;
            tokio::select! {
                biased;
                f = reader.next() => match f {
                    None => return End::Broken("closed by peer".into()),
                    Some(Err(e)) => return End::Broken(e.to_string()),
                    Some(Ok(frame)) => {
                        let now = Instant::now();
                        self.on_frame(frame, now);
                        self.top_up(&mut writer, now);
                    }
                },
                r = writer.flush(), if !writer.is_empty() => {
                    if let Err(e) = r {
                        return End::Broken(format!("write: {e}"));
                    }
                }
                _ = &mut due_timer, if may_send => {
                    self.top_up(&mut writer, Instant::now());
                    due_timer.as_mut().reset(self.due());
                }
                _ = scan.tick() => {
                    let now = Instant::now();
                    self.expire(now);
                    if !sending && now >= end + self.sh.cfg.timeout {
                        self.lose_all();
                        return End::Done;
                    }
                    self.top_up(&mut writer, now);
                }
                _ = &mut end_timer, if sending => {}
            }
        }
    }

    /// Intended send time of the next open-loop request.
    fn due(&self) -> Instant {
        match self.sh.interval {
            Some(iv) => self.sh.start + iv.mul_f64(self.next_k as f64),
            None => self.sh.end,
        }
    }

    /// Queues what should be in flight now: up to `depth` (closed loop) or
    /// every request whose intended time has come (open loop).
    fn top_up(&mut self, w: &mut FrameWriter<WriteHalf>, now: Instant) {
        if now >= self.sh.end {
            return;
        }
        if self.sh.interval.is_some() {
            while self.pending.len() < self.sh.cfg.max_outstanding {
                let due = self.due();
                if due > now || due >= self.sh.end {
                    break;
                }
                self.next_k += 1;
                // The timer wakes up to ~2 ms late; that lateness is the
                // generator's, not the path's, and is forgiven. Beyond it
                // (a stall held the request back) latency counts from the
                // intended time, less the slack.
                self.send(w, now.min(due + TIMER_SLACK));
            }
        } else {
            while self.pending.len() < self.sh.cfg.depth {
                self.send(w, now);
            }
        }
    }

    fn pick(&mut self) -> Method {
        let cfg = &self.sh.cfg;
        if cfg.slow_fraction == 0.0 && cfg.fail_fraction == 0.0 {
            return Method::Echo;
        }
        // xorshift64*: cheap, deterministic per connection.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let u = (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        if u < cfg.slow_fraction {
            Method::Sleep
        } else if u < cfg.slow_fraction + cfg.fail_fraction {
            Method::Fail
        } else {
            Method::Echo
        }
    }

    fn tag(&self, seqid: i32) -> u64 {
        (u64::from(self.id) << 32) | u64::from(seqid as u32)
    }

    fn send(&mut self, w: &mut FrameWriter<WriteHalf>, start: Instant) {
        let method = self.pick();
        let mut seqid = self.next_seqid;
        while self.pending.contains_key(&seqid) {
            seqid = seqid.wrapping_add(1);
        }
        self.next_seqid = seqid.wrapping_add(1);
        let len = wire::call_frame_len(&self.sh.prefix, method, self.sh.cfg.payload);
        if self.arena.capacity() < len {
            self.arena.reserve(len.max(ARENA));
        }
        let tag = self.tag(seqid);
        wire::put_call(
            &mut self.arena,
            &self.sh.prefix,
            method,
            seqid,
            tag,
            &self.sh.fill,
            self.sh.cfg.payload,
            self.sh.cfg.slow_ms,
        );
        w.push(self.arena.split().freeze());
        self.pending.insert(seqid, Pending { start, method });
        self.counts.sent += 1;
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn wrong(&mut self, e: String) {
        self.counts.wrong += 1;
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        self.error(e);
    }

    fn on_frame(&mut self, frame: BytesMut, now: Instant) {
        let msg = match Message::parse(frame) {
            Ok(m) => m,
            Err(e) => return self.wrong(format!("unparseable reply: {e}")),
        };
        let seqid = msg.seqid();
        let Some(p) = self.pending.remove(&seqid) else {
            if self.expired.remove(&seqid) {
                self.counts.late += 1;
            } else {
                self.wrong(format!(
                    "{:?} {} with unknown seqid {seqid}",
                    msg.kind(),
                    String::from_utf8_lossy(msg.name())
                ));
            }
            return;
        };
        if msg.name() != p.method.name() {
            return self.wrong(format!(
                "seqid {seqid}: reply named {:?}, expected {:?}",
                String::from_utf8_lossy(msg.name()),
                String::from_utf8_lossy(p.method.name())
            ));
        }
        match (msg.kind(), p.method) {
            (MessageType::Reply, Method::Echo | Method::Sleep) => {
                if !wire::reply_matches(
                    msg.body(),
                    self.tag(seqid),
                    &self.sh.fill,
                    self.sh.cfg.payload,
                ) {
                    return self
                        .wrong(format!("seqid {seqid}: payload differs from the request's"));
                }
                self.counts.ok += 1;
                self.live.ok.fetch_add(1, Ordering::Relaxed);
                if p.start >= self.sh.warm_end && p.start < self.sh.end {
                    let us = now.saturating_duration_since(p.start).as_micros() as u64;
                    let us = us.clamp(1, HIST_MAX_US);
                    let h = if p.method == Method::Sleep {
                        &mut self.slow
                    } else {
                        &mut self.fast
                    };
                    h.saturating_record(us);
                    self.measured += 1;
                }
            }
            (MessageType::Exception, m) => {
                let e = rpc_codec::read_application_exception(msg.body());
                match e {
                    Ok(e) if m == Method::Fail && e.message == FAIL_MESSAGE => {
                        self.counts.expected_exceptions += 1;
                    }
                    Ok(e) => {
                        self.counts.exceptions += 1;
                        self.live.errors.fetch_add(1, Ordering::Relaxed);
                        self.error(format!(
                            "seqid {seqid}: exception type {} on {}: {}",
                            e.kind,
                            String::from_utf8_lossy(m.name()),
                            e.message
                        ));
                    }
                    Err(e) => self.wrong(format!("seqid {seqid}: unreadable exception: {e}")),
                }
            }
            (kind, m) => self.wrong(format!(
                "seqid {seqid}: {kind:?} in answer to {}",
                String::from_utf8_lossy(m.name())
            )),
        }
    }

    /// Counts requests older than the timeout as lost.
    fn expire(&mut self, now: Instant) {
        let limit = self.sh.cfg.timeout;
        let before = self.pending.len();
        let expired = &mut self.expired;
        self.pending.retain(|&seqid, p| {
            let keep = now.saturating_duration_since(p.start) < limit;
            if !keep {
                expired.insert(seqid);
            }
            keep
        });
        let lost = (before - self.pending.len()) as u64;
        if lost > 0 {
            self.counts.lost += lost;
            self.live.lost.fetch_add(lost, Ordering::Relaxed);
            self.error(format!(
                "{lost} request(s) unanswered after {:?}",
                self.sh.cfg.timeout
            ));
        }
        if self.expired.len() > 100_000 {
            self.expired.clear();
        }
    }

    fn lose_all(&mut self) {
        let n = self.pending.len() as u64;
        if n > 0 {
            self.counts.lost += n;
            self.live.lost.fetch_add(n, Ordering::Relaxed);
            self.pending.clear();
        }
    }
}
