//! The Echo service of `examples/thrift/echo.thrift`, implemented on the
//! generated code, for the demo, the tests and as an example.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_sdk::gen::echo::{EchoError, EchoSyncHandler, EchoSyncProcessor};
use rpc_sdk::ThriftProcessor;

/// Longest `sleep` served, so a caller cannot park a thread for ever.
pub const MAX_SLEEP_MS: i32 = 60_000;

/// The Echo methods.
#[derive(Clone, Default)]
pub struct EchoHandler {
    /// Oneway `notify` calls received.
    pub notified: Arc<AtomicUsize>,
}

impl EchoSyncHandler for EchoHandler {
    fn handle_echo(&self, message: String) -> thrift::Result<String> {
        Ok(message)
    }

    fn handle_add(&self, a: i64, b: i64) -> thrift::Result<i64> {
        a.checked_add(b).ok_or_else(|| {
            thrift::Error::Application(thrift::ApplicationError::new(
                thrift::ApplicationErrorKind::Unknown,
                format!("{a} + {b} overflows i64"),
            ))
        })
    }

    fn handle_sleep(&self, ms: i32) -> thrift::Result<String> {
        let ms = ms.clamp(0, MAX_SLEEP_MS);
        std::thread::sleep(Duration::from_millis(ms as u64));
        Ok(format!("slept {ms} ms"))
    }

    fn handle_fail(&self, message: String) -> thrift::Result<()> {
        Err(EchoError::new(message).into())
    }

    fn handle_notify(&self, message: String) -> thrift::Result<()> {
        self.notified.fetch_add(1, Ordering::SeqCst);
        tracing::info!(%message, "notified");
        Ok(())
    }
}

/// The Echo service as an SDK handler.
pub fn processor(handler: EchoHandler) -> ThriftProcessor<EchoSyncProcessor<EchoHandler>> {
    ThriftProcessor::new(EchoSyncProcessor::new(handler))
}
