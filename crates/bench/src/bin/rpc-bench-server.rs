//! `rpc-bench-server`: the benchmark service (`echo`, `sleep`, `fail`).
//!
//! - `--listen ADDR` serves connections directly (a service endpoint);
//!   with `-c config.ini` it also registers `service` at that address in
//!   the configured registry (`zk`, `product`).
//! - `--worker BACK_ADDRESS` dials an `rpc-lb` as a worker process
//!   (SPEC §5) and serves up to `--pool-size` calls at once; SIGTERM sends
//!   `STOP`, waits for the confirmation and the calls in flight, and exits.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rpc_bench::server::{self, ServeConfig, ServerStats};
use rpc_config::{CommonArgs, Config};
use rpc_transport::{Address, Listener};
use tokio::sync::watch;

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
    /// Dial this LB back address as a worker instead of listening.
    #[arg(long, value_name = "BACK_ADDRESS")]
    worker: Option<Address>,
    /// Worker connections this process opens (each one a worker).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Calls served at once per connection (default: the config's
    /// worker_pool_size in worker mode, unlimited when listening).
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
    /// Worker: most seconds a graceful stop may take.
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
        match args.worker.clone().or_else(|| {
            // A configuration with back_address and no listen address means worker mode.
            config
                .as_ref()
                .filter(|_| args.listen.is_empty())
                .and_then(|c| c.back_address.clone())
        }) {
            Some(back) => worker_mode(args, config, back).await,
            None => listen_mode(args, config).await,
        }
    })
}

fn serve_config(args: &Args, pool: usize, config: Option<&Config>) -> ServeConfig {
    ServeConfig {
        pool_size: pool,
        default_sleep: Duration::from_millis(args.sleep_ms),
        delay: Duration::from_millis(args.delay_ms),
        max_frame: config
            .map(|c| c.max_frame_size)
            .unwrap_or(rpc_codec::DEFAULT_MAX_FRAME),
        ..ServeConfig::default()
    }
}

async fn listen_mode(args: Args, config: Option<Config>) -> anyhow::Result<()> {
    let mut addrs = args.listen.clone();
    if addrs.is_empty() {
        let c = config.as_ref().ok_or_else(|| {
            anyhow::anyhow!("give --listen ADDR, --worker BACK_ADDRESS or -c config.ini")
        })?;
        addrs.push(c.front_address()?);
    }
    let cfg = Arc::new(serve_config(
        &args,
        args.pool_size.unwrap_or(usize::MAX),
        config.as_ref(),
    ));
    let stats = Arc::new(ServerStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut bound = Vec::new();
    for a in &addrs {
        let l = Listener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        let local = l.local_address();
        println!("listening on {local}");
        bound.push(local);
        tokio::spawn(server::serve_listener(
            l,
            cfg.clone(),
            stats.clone(),
            stop_rx.clone(),
        ));
    }
    let mut registrations = Vec::new();
    if let (Some(c), false) = (&config, args.no_register) {
        let service = args
            .service
            .clone()
            .or_else(|| c.service.clone())
            .unwrap_or_else(|| "bench".into());
        let registry = rpc_registry::open(c).await?;
        for a in &bound {
            let mut e = rpc_registry::Endpoint::new(&service, &a.to_string());
            if let Some(v) = &args.common.code_url_version {
                e.code_url_version = v.clone();
            }
            registrations.push(registry.register(e).await?);
            println!("registered {service} at {a}");
        }
    }
    server::wait_for_signal().await;
    for r in registrations {
        r.deregister().await;
    }
    let _ = stop_tx.send(true);
    Ok(())
}

async fn worker_mode(args: Args, config: Option<Config>, back: Address) -> anyhow::Result<()> {
    let pool = args
        .pool_size
        .or(config.as_ref().map(|c| c.worker_pool_size))
        .unwrap_or(1);
    anyhow::ensure!(pool >= 1, "--pool-size must be at least 1");
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let cfg = Arc::new(serve_config(&args, pool, config.as_ref()));
    let stats = Arc::new(ServerStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let hb = Duration::from_secs_f64(args.heartbeat_timeout.max(0.1));
    let stop = Duration::from_secs_f64(args.stop_timeout.max(0.0));
    let tasks: Vec<_> = (0..args.workers)
        .map(|_| {
            tokio::spawn(server::run_worker(
                back.clone(),
                cfg.clone(),
                stats.clone(),
                hb,
                stop,
                stop_rx.clone(),
            ))
        })
        .collect();
    println!(
        "worker dialling {back} (pool size {pool}, {} connection(s))",
        args.workers
    );
    server::wait_for_signal().await;
    let _ = stop_tx.send(true);
    let all = futures::future::join_all(tasks);
    tokio::select! {
        _ = all => {}
        _ = server::wait_for_signal() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}
