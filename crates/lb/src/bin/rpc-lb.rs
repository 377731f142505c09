//! `rpc-lb -c config.ini`: the load balancer workers dial into (or that
//! starts them, with `worker_command`). SIGTERM/SIGINT stop it gracefully,
//! SIGHUP replaces its supervised workers.

use clap::Parser;
use rpc_config::CommonArgs;
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rpc-lb",
    version,
    about = "Load balancer: proxies call it, worker processes dial in and serve"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let (config, _log) = Args::parse().common.server_config()?;
    // Configuration errors before anything connects anywhere.
    rpc_lb::validate(&config)?;
    let rt = rpc_config::runtime(config.threads)?;
    rt.block_on(async {
        let registry = rpc_registry::open(&config).await?;
        let lb = rpc_lb::start(&config, registry).await?;
        // SIGHUP replaces the supervised workers, one by one.
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = rpc_config::wait_for_signal() => break,
                _ = hup.recv() => tokio::select! {
                    _ = lb.reload() => {}
                    _ = rpc_config::wait_for_signal() => break,
                },
            }
        }
        tracing::info!("stopping: leaving the registry, then finishing requests in flight");
        rpc_config::stop_or_exit(lb.stop()).await;
        Ok(())
    })
}
