//! Sockets as the SPEC sees them: every address is `host:port` (TCP) or a
//! filesystem path (Unix domain socket), and every hop carries frames.

mod address;
pub mod handoff;
mod reader;
mod stream;
pub mod tls;
mod writer;

pub use address::Address;
pub use reader::FrameReader;
pub use stream::{Listener, ReadHalf, SocketFile, Stream, TlsStream, WriteHalf};
pub use writer::FrameWriter;
