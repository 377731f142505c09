//! `rpc-bench`: load generator for the proxy, the LB or a service.
//!
//! Exits 0 when every reply was right, 1 on a wrong or lost reply (or an
//! unexpected exception), 2 when the target cannot be reached.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc_bench::load::{self, LoadConfig};
use rpc_bench::report::Live;
use rpc_transport::Address;

#[derive(Parser, Debug)]
#[command(
    name = "rpc-bench",
    version,
    about = "Sends framed Thrift calls through rpc-proxy (service:method) or straight to a service, and checks every reply"
)]
struct Args {
    /// Where to send: host:port or a Unix socket path.
    #[arg(short = 't', long, default_value = "127.0.0.1:5550")]
    target: Address,
    /// Service name used as the `service:` prefix.
    #[arg(long, default_value = "bench")]
    service: String,
    /// Talk to a service directly: bare method names.
    #[arg(long)]
    direct: bool,
    /// Connections carrying load.
    #[arg(short = 'c', long, default_value_t = 4)]
    connections: usize,
    /// Closed loop: requests in flight per connection.
    #[arg(short = 'd', long, default_value_t = 8)]
    depth: usize,
    /// Open loop: total requests per second (latency from intended send time).
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Bytes of payload per call.
    #[arg(short = 'p', long, default_value_t = 64)]
    payload: usize,
    /// Share of calls to `sleep` (slow calls).
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// How long a `sleep` call sleeps, milliseconds.
    #[arg(long, default_value_t = 50)]
    slow_ms: u32,
    /// Share of calls to `fail` (answered with an exception on purpose).
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
    /// Measured seconds.
    #[arg(short = 'D', long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(short = 'w', long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds without a reply before a request counts as lost.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Extra connections opened first and held idle for the whole run.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Bytes of a call each idle connection sends before falling silent
    /// (a peer stalled mid-frame; at most the call's length less one).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    idle_partial: usize,
    /// Open loop: most requests in flight per connection.
    #[arg(long, default_value_t = 100_000)]
    max_outstanding: usize,
    /// Largest reply frame accepted, bytes.
    #[arg(long, default_value_t = rpc_codec::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Runtime worker threads (1: single-threaded; 0: single-threaded on up to 4 cores, else one per core).
    #[arg(short = 'T', long, default_value_t = 1)]
    threads: usize,
    /// Write the JSON report to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress line and no summary.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Unexpected exceptions are counted but do not fail the run.
    #[arg(long)]
    allow_exceptions: bool,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(v.is_finite() && v >= 0.0, "--{name} must be >= 0 seconds");
    Ok(Duration::from_secs_f64(v))
}

fn main() {
    let args = Args::parse();
    // Warnings only; the tool's own output is the progress and summary.
    let _log = rpc_config::init_logging("warn", None);
    match real_main(args) {
        Ok(passed) => std::process::exit(if passed { 0 } else { 1 }),
        Err(e) => {
            eprintln!("rpc-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main(a: Args) -> anyhow::Result<bool> {
    let cfg = LoadConfig {
        target: a.target.clone(),
        service: a.service.clone(),
        direct: a.direct,
        connections: a.connections,
        depth: a.depth,
        rate: a.rate,
        payload: a.payload,
        slow_fraction: a.slow_fraction,
        slow_ms: a.slow_ms,
        fail_fraction: a.fail_fraction,
        warmup: secs("warmup", a.warmup)?,
        duration: secs("duration", a.duration)?,
        timeout: secs("timeout", a.timeout)?,
        idle_connections: a.idle_connections,
        idle_partial: a.idle_partial,
        max_outstanding: a.max_outstanding,
        max_frame: a.max_frame,
        threads: a.threads,
        allow_exceptions: a.allow_exceptions,
    };
    cfg.validate()?;
    if cfg.idle_connections > 0 {
        let limit = rpc_bench::raise_nofile_limit();
        let need = (cfg.idle_connections + cfg.connections + 64) as u64;
        anyhow::ensure!(
            limit >= need,
            "open-files limit {limit} is below the {need} descriptors needed (raise `ulimit -n`)"
        );
    }
    let rt = rpc_bench::runtime(a.threads)?;
    let live = Arc::new(Live::default());
    let quiet = a.quiet;
    let report = rt.block_on(async {
        let progress = (!quiet).then(|| tokio::spawn(progress(live.clone())));
        let r = load::run(cfg, live.clone()).await;
        if let Some(p) = progress {
            p.abort();
        }
        r
    })?;
    if !quiet {
        eprintln!("{}", report.summary());
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        if path.as_os_str() == "-" {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")?;
        } else {
            std::fs::write(path, text + "\n")
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
    }
    Ok(report.passed)
}

/// One line per second on stderr: replies/s and the error counters.
async fn progress(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = live.snapshot();
    let mut t = 0u64;
    loop {
        tick.tick().await;
        t += 1;
        let now = live.snapshot();
        eprintln!(
            "[{t:>3}s] {:>9} req/s  errors={} lost={} reconnects={}",
            now[0] - last[0],
            now[1],
            now[2],
            now[3]
        );
        last = now;
    }
}
