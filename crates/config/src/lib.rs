//! What every binary reads before it starts: the original's `config.ini`
//! (SPEC §7), its command-line flags, and the logging they select.

mod cli;
#[cfg(feature = "status-page")]
pub mod falcon;
mod ini;
mod logging;
#[cfg(feature = "status-page")]
pub mod methods;
#[cfg(feature = "otlp")]
pub mod otel;
mod process;
#[cfg(feature = "status-page")]
pub mod status_page;
mod zk_auth;

pub use cli::CommonArgs;
pub use ini::{Balance, Config, ConfigError, Dispatch, RegistrySpec};
pub use logging::{init_logging, init_logging_as, LogFormat};
pub use process::{runtime, stop_or_exit, wait_for_signal, StopSignals, SINGLE_THREAD_MAX_CORES};
pub use zk_auth::ZkAuth;

/// `3m12s`, `2h05m`, `4d03h`.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
