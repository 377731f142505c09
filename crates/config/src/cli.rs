use std::path::PathBuf;

use clap::Args;
use tracing_appender::non_blocking::WorkerGuard;

use crate::{init_logging_as, Config, ConfigError, LogFormat};

/// Flags shared by `rpc-proxy`, `rpc-lb` and services built on the SDK.
/// Both the original's spellings (`--log_level`) and kebab-case work.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Configuration file (config.ini format).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log file, rolled daily; stderr when absent.
    #[arg(short = 'L', long = "log", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// trace, debug, info, warn or error.
    #[arg(long = "log-level", alias = "log_level", default_value = "info")]
    pub log_level: String,
    /// `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long = "log-format", alias = "log_format", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Working directory to switch to before anything else.
    #[arg(long = "work-dir", alias = "work_dir", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Code version recorded in the registry entry.
    #[arg(long = "code-url-version", alias = "code_url_version")]
    pub code_url_version: Option<String>,
    /// Address for the metrics/profile HTTP endpoint (overrides config).
    #[arg(long = "profile-address", alias = "profile_address")]
    pub profile_address: Option<String>,
}

impl CommonArgs {
    /// What every binary does first: switch to `--work-dir`, start logging
    /// (keep the guard for the life of the process), and read `-c` if
    /// given.
    pub fn prepare(&self) -> Result<(Option<Config>, Option<WorkerGuard>), ConfigError> {
        if let Some(dir) = &self.work_dir {
            std::env::set_current_dir(dir).map_err(|source| ConfigError::WorkDir {
                path: dir.clone(),
                source,
            })?;
        }
        let log = init_logging_as(&self.log_level, self.log_file.as_deref(), self.log_format);
        let config = self.config.as_deref().map(Config::load).transpose()?;
        Ok((config, log))
    }

    /// [`CommonArgs::prepare`] for a server (`rpc-proxy`, `rpc-lb`): the
    /// defaults without `-c`, and `--profile-address` as `metrics_address`.
    pub fn server_config(&self) -> Result<(Config, Option<WorkerGuard>), ConfigError> {
        let (config, log) = self.prepare()?;
        let mut config = config.unwrap_or_default();
        if let Some(addr) = &self.profile_address {
            config.metrics_address = Some(crate::ini::loopback_unless_named(addr));
        }
        Ok((config, log))
    }
}
