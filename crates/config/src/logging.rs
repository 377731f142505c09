use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: to stderr, or to `log_file` rolled daily
/// (`file.YYYY-MM-DD`). `RUST_LOG` overrides `level`. Keep the guard alive
/// for the life of the process so buffered lines are flushed at exit.
pub fn init_logging(level: &str, log_file: Option<&Path>) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    match log_file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "rpc.log".into());
            let appender = tracing_appender::rolling::daily(dir, name);
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(false)
                .try_init();
            Some(guard)
        }
        None => {
            // Colours only on a terminal: pipes and files get plain text.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init();
            None
        }
    }
}
