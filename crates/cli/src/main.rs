//! `rpcctl`: the operator's tool. `list` shows what the registry holds;
//! `ping` checks that the endpoints of a service answer SPEC §4
//! heartbeats; `drain` and `undrain` put and remove an endpoint's drain
//! mark, which takes it out of the proxies' rotation and back. Nothing
//! else is ever registered or changed in the registry (the embedded one
//! drops the entries of dead processes, as every reader of it does).
//! `top` shows live traffic from status pages; `call` makes one Thrift
//! call through a proxy, typed by an IDL, with JSON in and out.

mod age;
mod call;
mod drain;
mod idl;
mod list;
mod ping;
mod source;
mod table;
mod tjson;
mod top;
mod tui;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rpc_config::{Config, RegistrySpec};
use rpc_transport::tls::TlsClient;
use rpc_transport::Address;

use crate::source::Source;

/// The longest `rpcctl` waits for ZooKeeper (connecting, and each read).
const REGISTRY_WAIT: Duration = Duration::from_secs(10);

/// Where `call` finds the proxy when neither `--proxy` nor the config say.
const DEFAULT_PROXY: &str = "127.0.0.1:5550";

#[derive(Parser)]
#[command(
    name = "rpcctl",
    version,
    about = "Inspect the registry, check endpoints, drain and undrain them, watch traffic, make calls",
    after_help = "Registry: --zk, else the `zk` key of -c config.ini, else the embedded \
                  registry the other binaries default to (RPC_REGISTRY_DIR or the system's \
                  temporary directory).\n\
                  Exit status: 0 on success; 1 when the registry cannot be read or written, \
                  when `ping` got no echo from any endpoint, when `drain`/`undrain` name \
                  an endpoint that is not registered (without --force), when `top` could \
                  read no status page, or when `call` did not return (an exception, an \
                  error)."
)]
struct Args {
    /// Registry: ZooKeeper hosts `h1:2181,h2:2181`, or `local:DIR` (`local`
    /// alone: the default directory) for the embedded registry. Overrides
    /// the config's `zk`.
    #[arg(long, global = true, value_name = "HOSTS")]
    zk: Option<RegistrySpec>,
    /// ZooKeeper credentials, `digest:user:password` in a file only its
    /// owner may read (as the config's `zk_auth_file`, which it
    /// overrides): `drain` marks are then that identity's, and `undrain`
    /// may remove them.
    #[arg(long = "zk-auth-file", global = true, value_name = "FILE")]
    zk_auth_file: Option<PathBuf>,
    /// Configuration file (config.ini format): its `zk` and `product` keys;
    /// `call` also takes its `proxy_address` and `rpc_timeout`.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The CA that signs endpoints' certificates (as a proxy's
    /// `tls_ca_file`, which it overrides): `ping` and the dashboard reach
    /// endpoints that registered TLS with it and the client keys below.
    #[arg(long = "tls-ca", global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The client certificate such endpoints accept (`tls_cert_file`).
    #[arg(long = "tls-cert", global = true, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Its private key (`tls_key_file`).
    #[arg(long = "tls-key", global = true, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Products, services and endpoints with their registry records and
    /// how long ago each started.
    List {
        /// Only this product [default: every product].
        product: Option<String>,
        /// Only this service of PRODUCT.
        service: Option<String>,
    },
    /// Send one heartbeat to every registered endpoint of SERVICE and time
    /// its echo.
    Ping {
        /// The service whose endpoints to ping.
        service: String,
        /// Product of SERVICE [default: the config's `product`, else test].
        #[arg(short, long)]
        product: Option<String>,
        /// Give up on an endpoint (connecting included) after this long.
        #[arg(long, default_value_t = 1000, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: u64,
        /// Also call SERVICE through a proxy (a method no service has,
        /// which an endpoint refuses without running anything): ADDR, or
        /// alone the config's first `proxy_address`, else 127.0.0.1:5550.
        #[arg(long, value_name = "ADDR", num_args = 0..=1)]
        proxy: Option<Option<Address>>,
        /// How many calls to make through the proxy, one after the other.
        #[arg(long, default_value_t = 3, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..=1000))]
        count: u64,
    },
    /// Stop proxies sending new calls to one endpoint of SERVICE, which
    /// keeps running: its calls in flight complete, its connections stay.
    /// While no other endpoint of SERVICE is up, proxies still use it
    /// rather than fail calls.
    Drain(DrainArgs),
    /// Let proxies send calls to a drained endpoint again.
    Undrain(DrainArgs),
    /// Serve a self-refreshing web page of the whole fleet: the registry,
    /// each endpoint's live state, and per-service traffic read from the
    /// status pages of proxies and LBs (and `/api/fleet`, the same as JSON).
    Dashboard {
        /// Address to serve the page on.
        #[arg(long, default_value = "127.0.0.1:9600", value_name = "ADDR")]
        listen: String,
        /// Status pages (`metrics_address`) of proxies and LBs to read.
        #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
        status: Vec<String>,
        /// How often to re-read everything.
        #[arg(long, default_value_t = 2000, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(100..))]
        refresh_ms: u64,
    },
    /// Live traffic from the status pages of proxies and LBs: per service
    /// and method the request rate, errors and p99 latency of the last
    /// interval; per endpoint, how the proxies see it. A terminal UI (q
    /// quits); with --once, or when standard output is not a terminal, one
    /// table after two reads (--json: the same as JSON).
    Top {
        /// Status pages (`metrics_address`) of proxies and LBs to read.
        #[arg(long, value_delimiter = ',', value_name = "ADDR,...", required = true)]
        status: Vec<String>,
        /// Time between reads; rates are over this interval.
        #[arg(long, default_value_t = 1000, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
    },
    /// Call METHOD of SERVICE through a proxy: ARGS (a JSON object keyed by
    /// argument names; `-` reads it from standard input) are encoded as
    /// the IDL says, the answer printed as JSON: the result, or
    /// {"exception", "field", "value"} for a declared exception, or
    /// {"exception": "TApplicationException", "type", "type_id",
    /// "message"}. Binary values are base64; enums are names.
    Call {
        /// The service, as the proxy routes it (its registry name).
        service: String,
        /// The method.
        method: String,
        /// The arguments, a JSON object [default: none].
        args: Option<String>,
        /// The IDL (Thrift file) that defines METHOD; files it includes
        /// are read from beside it.
        #[arg(long, value_name = "FILE.thrift")]
        thrift: PathBuf,
        /// The IDL service that has METHOD, when the file has several and
        /// none is named like SERVICE.
        #[arg(long, value_name = "NAME")]
        idl_service: Option<String>,
        /// The proxy [default: the config's first `proxy_address`, else
        /// 127.0.0.1:5550].
        #[arg(long, value_name = "ADDR")]
        proxy: Option<Address>,
        /// Give up after this long, connecting included [default: the
        /// config's `rpc_timeout` plus one second, so the proxy's own
        /// timeout answers first].
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        timeout_ms: Option<u64>,
    },
}

#[derive(clap::Args)]
struct DrainArgs {
    /// The service the endpoint serves.
    service: String,
    /// The endpoint: its registered frontend address (`host:port`, socket
    /// path) or its service_id.
    endpoint: String,
    /// Product of SERVICE [default: the config's `product`, else test].
    #[arg(short, long)]
    product: Option<String>,
    /// Act even if ENDPOINT is not registered (a mark for an endpoint not
    /// yet started, or the leftover mark of one that is gone).
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rpcctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(spec) = args.zk {
        config.registry = spec;
    }
    if let Some(file) = &args.zk_auth_file {
        config.set("zk_auth_file", &file.to_string_lossy())?;
    }
    for (flag, file) in [
        (&mut config.tls.ca, &args.tls_ca),
        (&mut config.tls.cert, &args.tls_cert),
        (&mut config.tls.key, &args.tls_key),
    ] {
        if file.is_some() {
            flag.clone_from(file);
        }
    }
    let wait = config.zk_session_timeout.min(REGISTRY_WAIT);
    let command = match args.command {
        // Before the registry is opened: the page starts (and shows the
        // error) while ZooKeeper is down; `top` and `call` do not read it.
        Command::Dashboard {
            listen,
            status,
            refresh_ms,
        } => return dashboard(&config, &listen, status, refresh_ms, wait).await,
        Command::Top {
            status,
            interval_ms,
            once,
        } => {
            let interval = Duration::from_millis(interval_ms);
            let once = once || !std::io::stdout().is_terminal();
            return top(status, interval, once, args.json).await;
        }
        Command::Call {
            service,
            method,
            args: call_args,
            thrift,
            idl_service,
            proxy,
            timeout_ms,
        } => {
            let request = call::Request {
                service,
                method,
                thrift,
                idl_service,
                args: call::read_args(call_args.as_deref())?,
            };
            let proxy = proxy.unwrap_or_else(|| default_proxy(&config));
            let limit = timeout_ms.map_or(config.rpc_timeout + Duration::from_secs(1), |ms| {
                Duration::from_millis(ms)
            });
            return make_call(request, &proxy, limit).await;
        }
        other => other,
    };
    let source = Source::open(&config.registry, config.zk_auth.as_ref(), wait).await?;
    match command {
        Command::List { product, service } => {
            let listing = list::gather(&source, product.as_deref(), service.as_deref()).await?;
            print(if args.json {
                listing.to_json()
            } else {
                listing.to_table()
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping {
            service,
            product,
            timeout_ms,
            proxy,
            count,
        } => {
            let product = product.unwrap_or_else(|| config.product.clone());
            let endpoints = source
                .services(&product)
                .await?
                .remove(&service)
                .unwrap_or_default();
            let limit = Duration::from_millis(timeout_ms);
            let tls = tls_client(&config)?;
            let mut report =
                ping::ping_all(&product, &service, &endpoints, tls.as_deref(), limit).await;
            if let Some(proxy) = proxy {
                let proxy = proxy.unwrap_or_else(|| default_proxy(&config));
                let calls = ping::through_proxy(&proxy, &service, count as usize, limit);
                report.proxy = Some(calls.await);
            }
            if endpoints.is_empty() {
                // Scripts still get their document (with no endpoint).
                eprintln!(
                    "rpcctl: no endpoint of {product}/{service} in {}",
                    source.describe()
                );
                if args.json {
                    print(report.to_json());
                }
                return Ok(ExitCode::FAILURE);
            }
            print(if args.json {
                report.to_json()
            } else {
                report.to_table()
            });
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Drain(d) => {
            change(&source, drain::Action::Drain, d, config.product, args.json).await
        }
        Command::Undrain(d) => {
            change(
                &source,
                drain::Action::Undrain,
                d,
                config.product,
                args.json,
            )
            .await
        }
        Command::Dashboard { .. } | Command::Top { .. } | Command::Call { .. } => {
            unreachable!("run above")
        }
    }
}

/// The client side of TLS, when a CA for endpoints is configured; its
/// files are read and checked here, so a bad one is an error up front.
fn tls_client(config: &Config) -> anyhow::Result<Option<Arc<TlsClient>>> {
    TlsClient::from_files(&config.tls).context("TLS client keys")
}

/// The proxy `call` and `ping --proxy` use unless told: the config's first
/// `proxy_address`, else [`DEFAULT_PROXY`].
fn default_proxy(config: &Config) -> Address {
    config
        .proxy_address
        .first()
        .cloned()
        .unwrap_or_else(|| Address::Tcp(DEFAULT_PROXY.into()))
}

/// `rpcctl drain` / `rpcctl undrain`.
async fn change(
    source: &Source,
    action: drain::Action,
    args: DrainArgs,
    default_product: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let product = args.product.unwrap_or(default_product);
    let change = drain::run(
        source,
        action,
        &product,
        &args.service,
        &args.endpoint,
        args.force,
    )
    .await?;
    if action == drain::Action::Drain && change.all_drained() {
        eprintln!(
            "rpcctl: every endpoint of {product}/{} is drained: proxies keep sending \
             them calls rather than fail them",
            args.service
        );
    }
    print(if json {
        change.to_json()
    } else {
        change.to_table()
    });
    Ok(ExitCode::SUCCESS)
}

/// Serves the fleet dashboard until Ctrl-C.
async fn dashboard(
    config: &Config,
    listen: &str,
    status: Vec<String>,
    refresh_ms: u64,
    registry_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    eprintln!("rpcctl: dashboard on http://{}/", listener.local_addr()?);
    let mut options = rpc_dashboard::Options::new(config.registry.clone());
    options.tls = tls_client(config)?;
    options.status_pages = status;
    options.refresh = Duration::from_millis(refresh_ms);
    options.registry_timeout = registry_timeout;
    tokio::select! {
        served = rpc_dashboard::serve(listener, options) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `rpcctl top`: one snapshot after two reads, or the terminal UI until
/// the user quits.
async fn top(
    status: Vec<String>,
    interval: Duration,
    once: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // A page that does not answer within the interval is late: it is shown
    // as such rather than holding the others back.
    let limit = interval.min(Duration::from_secs(2));
    let mut sampler = top::Sampler::new(&status, limit);
    if once {
        let started = tokio::time::Instant::now();
        sampler.sample().await;
        tokio::time::sleep_until(started + interval).await;
        sampler.sample().await;
        let snapshot = sampler.snapshot();
        print(if json {
            snapshot.to_json()
        } else {
            snapshot.to_text()
        });
        if sampler.all_failed() {
            eprintln!("rpcctl: no status page could be read");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (publish, snapshots) = tokio::sync::watch::channel(None);
    let sampling = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sampler.sample().await;
            if publish.send(Some(Arc::new(sampler.snapshot()))).is_err() {
                return;
            }
        }
    });
    // SIGTERM or SIGHUP end the UI as `q` does, so the terminal is restored.
    let stop = Arc::new(AtomicBool::new(false));
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let ui = tokio::task::spawn_blocking(move || tui::run(snapshots, stop, interval)).await;
    sampling.abort();
    signals.abort();
    ui.context("the terminal UI panicked")?
        .context("the terminal UI failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `rpcctl call`: prints the answer as JSON; fails unless the call
/// returned.
async fn make_call(
    request: call::Request,
    proxy: &Address,
    limit: Duration,
) -> anyhow::Result<ExitCode> {
    let answer = call::call(&request, proxy, limit).await?;
    if let Some(doc) = answer.to_json() {
        print(serde_json::to_string_pretty(&doc).expect("JSON values serialize") + "\n");
    }
    match answer.error(&request.service, &request.method) {
        Some(e) => {
            eprintln!("rpcctl: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn print(text: String) {
    use std::io::Write;
    // A closed pipe (`rpcctl list | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
