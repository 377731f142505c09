//! `rpc-demo`: the whole stack on one machine with nothing installed, or
//! the Echo service / Echo worker alone.
//!
//! - `rpc-demo [--once] [--calls N]`: starts an embedded registry (a
//!   temporary directory), a local proxy and the Echo service, calls it
//!   through the proxy with the generated client and keeps serving until
//!   Ctrl-C (`--once`: exits after the calls, non-zero if one went wrong).
//! - `rpc-demo service -c config.ini`: only the Echo service, registering
//!   as the configuration says.
//! - `rpc-demo worker -c config.ini`: an Echo worker dialing `back_address`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rpc_config::{CommonArgs, Config, RegistrySpec};
use rpc_demo::{processor, EchoHandler};
use rpc_registry::Registry;
use rpc_sdk::client::ProxyClient;
use rpc_sdk::gen::echo::{EchoSyncClient, TEchoSyncClient};
use rpc_sdk::{Service, Worker};
use rpc_transport::Address;

#[derive(Parser)]
#[command(version, about = "Echo on rpc_proxy: demo, service or worker")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Exit after the demonstration calls instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Calls in the throughput burst.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Client threads in the burst (one connection each).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Where the demo's proxy listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    proxy_address: String,
    #[arg(long = "log-level", default_value = "warn")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Echo service (registers per config.ini; stand_alone=1 skips it).
    Service(CommonArgs),
    /// Run an Echo worker dialing the LB at `back_address`.
    Worker(CommonArgs),
}

fn load(args: &CommonArgs) -> anyhow::Result<Config> {
    if let Some(dir) = &args.work_dir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot enter {}", dir.display()))?;
    }
    let path = args.config.as_ref().context("-c config.ini is required")?;
    Ok(Config::load(path)?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Command::Service(args)) => {
            let _log = rpc_config::init_logging(&args.log_level, args.log_file.as_deref());
            let config = load(&args)?;
            let mut service = Service::new(config, processor(EchoHandler::default()));
            if let Some(v) = &args.code_url_version {
                service = service.with_code_url_version(v.clone());
            }
            rt.block_on(async move {
                // Caught before we say we serve: a stop right after is kept.
                let mut stop = rpc_sdk::StopSignals::new()?;
                let handle = service.start().await?;
                println!("echo service listening on {}", handle.address());
                stop.recv().await;
                handle.stop().await;
                anyhow::Ok(())
            })
        }
        Some(Command::Worker(args)) => {
            let _log = rpc_config::init_logging(&args.log_level, args.log_file.as_deref());
            let config = load(&args)?;
            let worker = Worker::from_config(&config, processor(EchoHandler::default()))?;
            rt.block_on(worker.run())
        }
        None => {
            let _log = rpc_config::init_logging(&cli.demo.log_level, None);
            rt.block_on(demo(cli.demo))
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create the registry directory")?;
    let registry: Arc<dyn Registry> = Arc::new(
        rpc_registry::local::LocalRegistry::open(dir.path(), "test")
            .context("cannot open the embedded registry")?,
    );
    let mut config = Config {
        registry: RegistrySpec::Local(dir.path().to_path_buf()),
        ..Config::default()
    };
    for (k, v) in [
        ("service", "echo"),
        ("front_host", "127.0.0.1"),
        ("front_port", "0"),
        ("proxy_address", args.proxy_address.as_str()),
        ("quiet_period", "0"),
        ("stop_timeout", "5"),
        ("drain_timeout", "1"),
    ] {
        config.set(k, v)?;
    }
    println!("registry:  embedded, in {}", dir.path().display());

    let handler = EchoHandler::default();
    let service = Service::new(config.clone(), processor(handler.clone()))
        .with_registry(registry.clone())
        .start()
        .await?;
    println!("service:   echo at {}", service.address());
    let proxy = rpc_proxy::start(&config, registry.clone()).await?;
    let proxy_addr = proxy.addresses()[0].clone();
    println!("proxy:     {proxy_addr}");

    let once = args.once;
    let calls = {
        let addr = proxy_addr.clone();
        let notified = handler.notified.clone();
        tokio::task::spawn_blocking(move || demo_calls(&addr, &args, &notified))
    };
    let outcome = calls.await.context("the demo calls panicked")?;
    if outcome.is_ok() && !once {
        println!();
        println!("Serving until Ctrl-C. Call service `echo` through the proxy at {proxy_addr}");
        println!("with any Thrift client: framed transport, binary protocol, TMultiplexedProtocol(\"echo\").");
        println!("Python: TMultiplexedProtocol(TBinaryProtocol(TFramedTransport(TSocket(host, port))), \"echo\")");
        rpc_sdk::wait_for_signal().await;
    }
    proxy.shutdown().await;
    service.stop().await;
    outcome
}

/// The demonstration calls, with the generated blocking client.
fn demo_calls(
    addr: &Address,
    args: &DemoArgs,
    notified: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut echo = client(addr, timeout)?;

    // The proxy learns about the service from the registry asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match echo.echo("hello".into()) {
            Ok(r) => {
                anyhow::ensure!(r == "hello", "echo answered {r:?}");
                println!("echo(\"hello\")    -> {r:?}");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "service not routable yet");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("the echo service never became reachable"),
        }
    }
    let sum = echo.add(2, 40)?;
    anyhow::ensure!(sum == 42, "add answered {sum}");
    println!("add(2, 40)       -> {sum}");
    match echo.fail("boom".into()) {
        Err(thrift::Error::User(e)) => {
            let e = e
                .downcast_ref::<rpc_sdk::gen::echo::EchoError>()
                .context("unexpected exception type")?;
            anyhow::ensure!(e.message.as_deref() == Some("boom"), "fail raised {e:?}");
            println!(
                "fail(\"boom\")     -> raised EchoError {{ message: {:?} }}",
                e.message.as_deref().unwrap_or("")
            );
        }
        other => anyhow::bail!("fail should raise EchoError, got {other:?}"),
    }
    let slept = echo.sleep(20)?;
    println!("sleep(20)        -> {slept:?}");
    let before = notified.load(std::sync::atomic::Ordering::SeqCst);
    echo.notify("fire and forget".into())?;
    let deadline = Instant::now() + timeout;
    while notified.load(std::sync::atomic::Ordering::SeqCst) == before {
        anyhow::ensure!(Instant::now() < deadline, "the oneway notify never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("notify(...)      -> delivered (oneway)");

    burst(addr, args.calls, args.threads.max(1), timeout)
}

fn client(
    addr: &Address,
    timeout: Duration,
) -> anyhow::Result<
    EchoSyncClient<rpc_sdk::client::ProxyInputProtocol, rpc_sdk::client::ProxyOutputProtocol>,
> {
    let (i, o) = ProxyClient::connect(addr, "echo", timeout)
        .with_context(|| format!("cannot connect to the proxy at {addr}"))?
        .into_protocols();
    Ok(EchoSyncClient::new(i, o))
}

/// `calls` echo calls from `threads` blocking clients; prints throughput
/// and latency percentiles.
fn burst(addr: &Address, calls: usize, threads: usize, timeout: Duration) -> anyhow::Result<()> {
    if calls == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let per = calls.div_ceil(threads);
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per.min(calls.saturating_sub(t * per));
                s.spawn(move || {
                    let mut c = client(addr, timeout)?;
                    let mut lat = Vec::with_capacity(n);
                    for i in 0..n {
                        let msg = format!("burst {t}/{i}");
                        let t0 = Instant::now();
                        let r = c.echo(msg.clone())?;
                        lat.push(t0.elapsed());
                        anyhow::ensure!(r == msg, "echo answered {r:?} to {msg:?}");
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("burst thread panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut lat = Vec::with_capacity(calls);
    for r in results {
        lat.extend(r?);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "burst: {} echo calls from {threads} clients in {:.2} s -> {:.0} calls/s; latency p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
    );
    Ok(())
}
