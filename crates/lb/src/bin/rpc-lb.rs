//! `rpc-lb -c config.ini`: the load balancer workers dial into.

use clap::Parser;
use rpc_config::{CommonArgs, Config};

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
    let args = Args::parse();
    if let Some(dir) = &args.common.work_dir {
        std::env::set_current_dir(dir)?;
    }
    let _log = rpc_config::init_logging(&args.common.log_level, args.common.log_file.as_deref());
    let config = match &args.common.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // Configuration errors before anything connects anywhere.
    rpc_lb::server::validate(&config)?;
    let rt = rpc_lb::runtime(config.threads)?;
    rt.block_on(async {
        let registry = rpc_registry::open(&config).await?;
        let lb = rpc_lb::start(&config, registry).await?;
        rpc_lb::wait_for_signal().await;
        tracing::info!("stopping: leaving the registry, then finishing requests in flight");
        tokio::select! {
            _ = lb.stop() => {}
            _ = rpc_lb::wait_for_signal() => tracing::warn!("second signal: exiting now"),
        }
        Ok(())
    })
}
