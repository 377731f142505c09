//! `rpc-proxy -c config.ini`: the local proxy every application talks to.

use anyhow::Context;
use clap::Parser;
use rpc_config::CommonArgs;
use rpc_transport::handoff::{self, Handoff};
use tokio::signal::unix::{signal, SignalKind};

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
    /// Take over the listening sockets and then the client connections of
    /// the proxy running with this configuration (same work directory),
    /// which exits once it has handed everything over: an upgrade that
    /// drops no call and refuses no connection.
    #[arg(long)]
    upgrade: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut config, _log) = args.common.server_config()?;
    if config.proxy_address.is_empty() {
        config.proxy_address = vec!["127.0.0.1:5550".parse().expect("valid address")];
    }
    let control = handoff::control_path("rpc-proxy", &config.proxy_address[0]);
    let rt = rpc_config::runtime(config.threads)?;
    rt.block_on(async {
        // Caught from before we serve: a stop right after start is kept.
        let mut stop = rpc_config::StopSignals::new()?;
        let registry = rpc_registry::open(&config).await?;
        let proxy = if args.upgrade {
            take_over(&config, registry, &control).await?
        } else {
            rpc_proxy::start(&config, registry).await?
        };
        let handoff = Handoff::listen(&control)
            .with_context(|| format!("cannot listen for upgrades on {}", control.display()))?;
        // With TLS keys, SIGHUP reads them again.
        let mut hup = match proxy.is_tls() {
            true => Some(signal(SignalKind::hangup())?),
            false => None,
        };
        loop {
            tokio::select! {
                Some(_) = async { hup.as_mut()?.recv().await } => proxy.reload_tls(),
                _ = stop.recv() => {
                    tracing::info!("stopping: finishing requests in flight");
                    rpc_config::stop_or_exit(proxy.shutdown()).await;
                    return Ok(());
                }
                up = handoff.accept() => {
                    let mut up = up?;
                    tracing::info!(successor = up.pid, "upgrade: handing the listeners over");
                    match proxy.upgrade_to(&mut up).await {
                        Ok(()) => {
                            if let Err(e) = proxy.hand_off(up).await {
                                tracing::error!(error = %e, "upgrade: handing connections over failed");
                            }
                            return Ok(());
                        }
                        Err(e) => tracing::warn!(error = %e, "upgrade: the successor gave up; serving on"),
                    }
                }
            }
        }
    })
}

/// Starts on the sockets of the proxy running with this configuration,
/// then serves the client connections it hands over.
async fn take_over(
    config: &rpc_config::Config,
    registry: std::sync::Arc<dyn rpc_registry::Registry>,
    control: &std::path::Path,
) -> anyhow::Result<rpc_proxy::ProxyHandle> {
    let (sockets, mut takeover) = handoff::take_over(control).await?;
    let proxy = rpc_proxy::start_on(config, registry, sockets).await?;
    takeover.ready().await?;
    tracing::info!("upgrade: accepting; taking the client connections over");
    let mut adopted = 0u64;
    while let Some((stream, read)) = takeover.next_connection().await? {
        proxy.adopt(stream, read);
        adopted += 1;
    }
    tracing::info!(connections = adopted, "upgrade: done");
    Ok(proxy)
}
