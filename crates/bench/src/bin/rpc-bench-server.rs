//! `rpc-bench-server`: the benchmark service (`echo`, `sleep`, `fail`).
//!
//! Both modes run the Rust SDK with [`BenchHandler`]:
//!
//! - `--listen ADDR` (repeatable) serves connections directly, as an
//!   `rpc_sdk::Service`; with `-c config.ini` it also registers `service`
//!   at each address in the configured registry (`zk`, `product`).
//!   SIGTERM deregisters, answers the calls in flight and exits.
//! - `--worker BACK_ADDRESS` dials an `rpc-lb` as `--workers` SDK workers
//!   (SPEC §5), each serving up to `--pool-size` calls at once; SIGTERM
//!   sends `STOP`, waits for the confirmation and the calls in flight, and
//!   exits. Started by an `rpc-lb` (`worker_command`) with neither flag,
//!   it dials `RPC_BACK_ADDRESS` with `RPC_WORKER_POOL_SIZE` slots.

use std::time::Duration;

use clap::Parser;
use rpc_bench::server::BenchHandler;
use rpc_config::{CommonArgs, Config};
use rpc_sdk::{Service, Worker};
use rpc_transport::Address;

#[derive(Parser, Debug)]
#[command(
    name = "rpc-bench-server",
    version,
    about = "Benchmark service: echo, sleep, fail"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Serve on this address (repeatable); default: the config's front address.
    #[arg(long)]
    listen: Vec<Address>,
    /// Dial this LB back address as a worker instead of listening
    /// (default without --listen: $RPC_BACK_ADDRESS, set by a supervising
    /// rpc-lb, else the config's back_address).
    #[arg(long, value_name = "BACK_ADDRESS")]
    worker: Option<Address>,
    /// Worker connections this process opens (each one a worker).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Calls served at once per connection. Worker: later calls queue
    /// (default: $RPC_WORKER_POOL_SIZE, the config's worker_pool_size, else
    /// 1). Listening: later calls wait unread (default: the config's
    /// max_inflight, 1024).
    #[arg(long)]
    pool_size: Option<usize>,
    /// Service name to register (default: the config's `service`, else `bench`).
    #[arg(long)]
    service: Option<String>,
    /// Do not register even if a configuration is given.
    #[arg(long)]
    no_register: bool,
    /// Sleep of `sleep` calls that carry no duration, milliseconds.
    #[arg(long, default_value_t = 50)]
    sleep_ms: u64,
    /// Extra delay added to every call, milliseconds (a slow endpoint).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Worker: seconds without a heartbeat before the LB counts as lost.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_timeout: f64,
    /// Most seconds a graceful stop (SIGTERM) may take.
    #[arg(long, default_value_t = 30.0)]
    stop_timeout: f64,
    /// Runtime worker threads (1: single-threaded; 0: single-threaded on up to 4 cores, else one per core).
    #[arg(short = 'T', long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, _log) = args.common.prepare()?;
    rpc_bench::raise_nofile_limit();
    let rt = rpc_bench::runtime(args.threads)?;
    rt.block_on(async move {
        let back = match &args.worker {
            Some(a) => Some(a.clone()),
            None if args.listen.is_empty() => implied_back_address(config.as_ref())?,
            None => None,
        };
        match back {
            Some(back) => worker_mode(args, config, back).await,
            None => listen_mode(args, config).await,
        }
    })
}

fn handler(args: &Args) -> BenchHandler {
    BenchHandler {
        default_sleep: Duration::from_millis(args.sleep_ms),
        delay: Duration::from_millis(args.delay_ms),
    }
}

fn stop_timeout(args: &Args) -> Duration {
    Duration::from_secs_f64(args.stop_timeout.max(0.0))
}

async fn listen_mode(args: Args, config: Option<Config>) -> anyhow::Result<()> {
    if args.listen.is_empty() && config.is_none() {
        anyhow::bail!("give --listen ADDR, --worker BACK_ADDRESS or -c config.ini");
    }
    let register = config.is_some() && !args.no_register;
    let mut c = config.unwrap_or_default();
    c.stand_alone = !register;
    if register {
        let service = args.service.clone().or(c.service.take());
        c.service = Some(service.unwrap_or_else(|| "bench".into()));
    }
    if let Some(pool) = args.pool_size {
        // Calls read and not yet answered per connection; later ones wait
        // in the socket, in arrival order.
        anyhow::ensure!(pool >= 1, "--pool-size must be at least 1");
        c.max_inflight = pool;
    }
    // Deregister, answer what is in flight and exit: no quiet period.
    c.quiet_period = Duration::ZERO;
    c.stop_timeout = stop_timeout(&args);
    let mut service = Service::new(c.clone(), handler(&args)).listen_on(args.listen.clone());
    if let Some(v) = &args.common.code_url_version {
        service = service.with_code_url_version(v.clone());
    }
    // Caught before we say we serve: a stop right after is kept.
    let mut stop = rpc_sdk::StopSignals::new()?;
    let handle = service.start().await?;
    for a in handle.addresses() {
        println!("listening on {a}");
    }
    if register {
        let name = c.service.as_deref().unwrap_or_default();
        for a in handle.addresses() {
            println!("registered {name} at {a}");
        }
    }
    stop.recv().await;
    handle.stop().await;
    Ok(())
}

/// Where a supervising `rpc-lb` (`worker_command`) tells its workers to
/// dial, and how many calls each may serve at once.
const ENV_BACK_ADDRESS: &str = "RPC_BACK_ADDRESS";
const ENV_POOL_SIZE: &str = "RPC_WORKER_POOL_SIZE";

/// A variable's value, unless unset or empty.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Worker mode without `--worker` or `--listen`: the supervising LB's
/// address, else the configuration's `back_address`.
fn implied_back_address(config: Option<&Config>) -> anyhow::Result<Option<Address>> {
    match env_var(ENV_BACK_ADDRESS) {
        Some(a) => a
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{ENV_BACK_ADDRESS}={a:?}: {e}")),
        None => Ok(config.and_then(|c| c.back_address.clone())),
    }
}

async fn worker_mode(args: Args, config: Option<Config>, back: Address) -> anyhow::Result<()> {
    let env_pool = match env_var(ENV_POOL_SIZE) {
        Some(v) => Some(
            v.trim()
                .parse::<usize>()
                .map_err(|e| anyhow::anyhow!("{ENV_POOL_SIZE}={v:?}: {e}"))?,
        ),
        None => None,
    };
    let pool = args
        .pool_size
        .or(env_pool)
        .or(config.as_ref().map(|c| c.worker_pool_size))
        .unwrap_or(1);
    anyhow::ensure!(pool >= 1, "--pool-size must be at least 1");
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let max_frame = config
        .as_ref()
        .map(|c| c.max_frame_size)
        .unwrap_or(rpc_codec::DEFAULT_MAX_FRAME);
    let mut stop = rpc_sdk::StopSignals::new()?;
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let w = Worker::new(back.clone(), pool, handler(&args))
            .max_frame_size(max_frame)
            .heartbeat_timeout(Duration::from_secs_f64(args.heartbeat_timeout.max(0.1)))
            .stop_timeout(stop_timeout(&args));
        workers.push(w.start().await);
    }
    println!(
        "worker dialling {back} (pool size {pool}, {} connection(s))",
        args.workers
    );
    stop.recv().await;
    let all = futures::future::join_all(workers.into_iter().map(|w| w.stop()));
    tokio::select! {
        _ = all => {}
        _ = rpc_sdk::wait_for_signal() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}
