//! The dashboard on its own, for trying it out before `rpcctl dashboard`:
//!
//! ```sh
//! cargo run -p rpc-dashboard --example dashboard -- \
//!     --zk 127.0.0.1:2181 --listen 127.0.0.1:9600 --status 127.0.0.1:9550,127.0.0.1:9551
//! ```

use std::time::Duration;

use clap::Parser;
use rpc_config::RegistrySpec;

#[derive(Parser)]
#[command(about = "Serve the fleet dashboard")]
struct Args {
    /// Registry: ZooKeeper hosts `h1:2181,h2:2181`, or `local:DIR`
    /// [default: the embedded registry].
    #[arg(long, value_name = "HOSTS")]
    zk: Option<RegistrySpec>,
    /// Where the page and `/api/fleet` are served.
    #[arg(long, default_value = "127.0.0.1:9600", value_name = "ADDR")]
    listen: String,
    /// Status pages (`metrics_address`) of proxies and LBs to take traffic from.
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
    status: Vec<String>,
    /// How often everything is read again.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    refresh_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let registry = args.zk.unwrap_or_else(RegistrySpec::default_local);
    let mut options = rpc_dashboard::Options::new(registry);
    options.status_pages = args.status;
    options.refresh = Duration::from_millis(args.refresh_ms.max(100));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("dashboard on http://{}/", listener.local_addr()?);
    tokio::select! {
        served = rpc_dashboard::serve(listener, options) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
