//! `rpcctl`: the operator's tool. `list` shows what the registry holds.
//! Nothing is ever registered or changed in the registry (the
//! embedded one drops the entries of dead processes, as every reader of
//! it does).

mod age;
mod list;
mod source;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rpc_config::{Config, RegistrySpec};

use crate::source::Source;

/// The longest `rpcctl` waits for ZooKeeper (connecting, and each read).
const REGISTRY_WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "rpcctl",
    version,
    about = "Inspect the registry (read-only)",
    after_help = "Registry: --zk, else the `zk` key of -c config.ini, else the embedded \
                  registry the other binaries default to (RPC_REGISTRY_DIR or the system's \
                  temporary directory).\n\
                  Exit status: 0 on success; 1 when the registry cannot be read."
)]
struct Args {
    /// Registry: ZooKeeper hosts `h1:2181,h2:2181`, or `local:DIR` (`local`
    /// alone: the default directory) for the embedded registry. Overrides
    /// the config's `zk`.
    #[arg(long, global = true, value_name = "HOSTS")]
    zk: Option<RegistrySpec>,
    /// Configuration file (config.ini format): its `zk` and `product` keys.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
    let wait = config.zk_session_timeout.min(REGISTRY_WAIT);
    let source = Source::open(&config.registry, wait).await?;
    match args.command {
        Command::List { product, service } => {
            let listing = list::gather(&source, product.as_deref(), service.as_deref()).await?;
            print(if args.json {
                listing.to_json()
            } else {
                listing.to_table()
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(text: String) {
    use std::io::Write;
    // A closed pipe (`rpcctl list | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
