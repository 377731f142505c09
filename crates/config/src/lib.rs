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

pub use cli::CommonArgs;
pub use ini::{Balance, Config, ConfigError, Dispatch, RegistrySpec};
pub use logging::{init_logging, init_logging_as, LogFormat};
pub use process::{runtime, stop_or_exit, wait_for_signal, SINGLE_THREAD_MAX_CORES};
