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
    let (mut config, _log) = Args::parse().common.server_config()?;
    if config.proxy_address.is_empty() {
        config.proxy_address = vec!["127.0.0.1:5550".parse().expect("valid address")];
    }
    let rt = rpc_config::runtime(config.threads)?;
    rt.block_on(async {
        let registry = rpc_registry::open(&config).await?;
        let proxy = rpc_proxy::start(&config, registry).await?;
        rpc_config::wait_for_signal().await;
        tracing::info!("stopping: finishing requests in flight");
        rpc_config::stop_or_exit(proxy.shutdown()).await;
        Ok(())
    })
}
