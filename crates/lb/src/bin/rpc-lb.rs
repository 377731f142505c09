//! `rpc-lb -c config.ini`: the load balancer workers dial into (or that
//! starts them, with `worker_command`). SIGTERM/SIGINT stop it gracefully,
//! SIGHUP replaces its supervised workers, `--upgrade` takes over from the
//! LB running with the same configuration.

use anyhow::Context;
use clap::Parser;
use rpc_config::CommonArgs;
use rpc_transport::handoff::{self, Handoff};
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
    /// Take over the listening sockets, then the proxy connections, the
    /// workers and the registry entry of the LB running with this
    /// configuration (same work directory), which exits once it has handed
    /// everything over: an upgrade that fails no call and refuses no
    /// connection.
    #[arg(long)]
    upgrade: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (config, _log) = args.common.server_config()?;
    // Configuration errors before anything connects anywhere.
    let (_, front, _) = rpc_lb::validate(&config)?;
    let control = handoff::control_path("rpc-lb", &front);
    let rt = rpc_config::runtime(config.threads)?;
    rt.block_on(async {
        // Caught from before we serve: a stop right after start is kept.
        let mut stop = rpc_config::StopSignals::new()?;
        let registry = rpc_registry::open(&config).await?;
        let lb = if args.upgrade {
            take_over(&config, registry, &control).await?
        } else {
            rpc_lb::start(&config, registry).await?
        };
        let handoff = Handoff::listen(&control)
            .with_context(|| format!("cannot listen for upgrades on {}", control.display()))?;
        // SIGHUP replaces the supervised workers, one by one.
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = stop.recv() => break,
                _ = hup.recv() => tokio::select! {
                    _ = lb.reload() => {}
                    _ = stop.recv() => break,
                },
                up = handoff.accept() => {
                    let mut up = up?;
                    tracing::info!(successor = up.pid, "upgrade: handing the listeners over");
                    match lb.upgrade_to(&mut up).await {
                        Ok(()) => {
                            tracing::info!("upgrade: the successor accepts; handing everything over");
                            if let Err(e) = lb.hand_off(up).await {
                                tracing::error!(error = %e, "upgrade: handing connections over failed");
                            }
                            return Ok(());
                        }
                        Err(e) => tracing::warn!(error = %e, "upgrade: the successor gave up; serving on"),
                    }
                }
            }
        }
        tracing::info!("stopping: leaving the registry, then finishing requests in flight");
        rpc_config::stop_or_exit(lb.stop()).await;
        Ok(())
    })
}

/// Starts on the sockets of the LB running with this configuration, serves
/// the proxy connections it hands over, then registers in its place.
async fn take_over(
    config: &rpc_config::Config,
    registry: std::sync::Arc<dyn rpc_registry::Registry>,
    control: &std::path::Path,
) -> anyhow::Result<rpc_lb::LbHandle> {
    let (sockets, mut takeover) = handoff::take_over(control).await?;
    // Until the old LB hears that we accept, it serves, and the paths of
    // its Unix sockets are its own: a failure now must not remove them as
    // our listeners close, so this process then exits closing nothing.
    let lb = match rpc_lb::start_on(config, registry, sockets).await {
        Ok(lb) => lb,
        Err(e) => give_up(e),
    };
    if let Err(e) = takeover.ready().await {
        give_up(e.into());
    }
    tracing::info!("upgrade: accepting; taking the proxy connections over");
    // From here on the old LB no longer accepts: whatever goes wrong, this
    // one serves on.
    let mut adopted = 0u64;
    let complete = loop {
        match takeover.next_connection().await {
            Ok(Some((stream, read))) => {
                lb.adopt(stream, read);
                adopted += 1;
            }
            Ok(None) => break true,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: the old LB went away while handing over");
                break false;
            }
        }
    };
    tracing::info!(
        connections = adopted,
        "upgrade: proxy connections taken over"
    );
    let registered = tokio::time::timeout(config.stop_timeout, lb.register_now()).await;
    if registered.is_err() {
        tracing::warn!("upgrade: not registered yet (retrying); letting the old LB go");
    }
    if complete {
        if let Err(e) = takeover.finished().await {
            tracing::warn!(error = %e, "upgrade: the old LB went away");
        }
    }
    tracing::info!("upgrade: done");
    Ok(lb)
}

/// A failed upgrade, before the old LB stopped accepting: it serves on.
fn give_up(e: anyhow::Error) -> ! {
    tracing::error!(error = %format!("{e:#}"), "upgrade failed; the running LB serves on");
    // (A log file's writer may not flush now: say it where it shows.)
    eprintln!("rpc-lb: upgrade failed: {e:#}; the running LB serves on");
    std::process::exit(1)
}
