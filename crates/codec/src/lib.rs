//! The wire format of SPEC §2: Thrift *framed* transport carrying one
//! *binary*-protocol message per frame.
//!
//! The proxy and the LB never decode message bodies. They parse the header
//! once ([`Message::parse`]), rewrite what they must in place (seqid, the
//! `service:` prefix) and forward the very buffer they read, so a body is
//! never copied on the forwarding path.

mod control;
mod error;
mod frame;
mod message;
mod name;
mod trace;
mod tstruct;

pub use control::{
    application_exception, encode_message, heartbeat, heartbeat_reply, stop, stop_confirm,
    ExceptionKind,
};
pub use error::{FrameError, ProtocolError};
pub use frame::{FrameCodec, DEFAULT_MAX_FRAME, LEN_PREFIX};
pub use message::{Header, Message, MessageType};
pub use name::NameBuf;
pub use trace::{trace_field, with_trace_field, TRACE_FIELD_ID};
pub use tstruct::{read_application_exception, ApplicationException};
