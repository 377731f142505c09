use thiserror::Error;

/// A message whose frame was complete but whose header is not valid Thrift
/// binary protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("bad protocol version {0:#010x} (expected strict binary 0x8001xxxx)")]
    BadVersion(u32),
    #[error("non-strict (old) binary header is not supported; use strict TBinaryProtocol")]
    NonStrictHeader,
    #[error("message header truncated ({0} bytes)")]
    Truncated(usize),
    #[error("negative or oversized method name length {0}")]
    BadNameLength(i32),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("malformed struct: {0}")]
    BadStruct(&'static str),
}

/// Failure to cut a frame out of a byte stream. Every variant is fatal to
/// the connection it happened on (and only to that one).
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: usize },
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("empty frame")]
    Empty,
    #[error("frame incomplete after {0:?}")]
    Incomplete(std::time::Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
