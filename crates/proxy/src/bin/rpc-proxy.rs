//! `rpc-proxy -c config.ini`: the local proxy every application talks to.

use clap::Parser;
use rpc_config::CommonArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rpc-proxy",
    version,
    about = "Local proxy routing service:method Thrift calls to live endpoints"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, _log) = args.common.prepare()?;
    let mut config = config.unwrap_or_default();
    if let Some(addr) = &args.common.profile_address {
        config.metrics_address = Some(addr.clone());
    }
    if config.proxy_address.is_empty() {
        config.proxy_address = vec!["127.0.0.1:5550".parse().expect("valid address")];
    }
    let rt = rpc_proxy::runtime(config.threads)?;
    rt.block_on(async {
        let registry = rpc_registry::open(&config).await?;
        let proxy = rpc_proxy::start(&config, registry).await?;
        rpc_proxy::wait_for_signal().await;
        tracing::info!("stopping: finishing requests in flight");
        tokio::select! {
            _ = proxy.shutdown() => {}
            _ = rpc_proxy::wait_for_signal() => tracing::warn!("second signal: exiting now"),
        }
        Ok(())
    })
}
