"""Framed strict-binary Thrift messages (SPEC section 2), read and written
without decoding bodies: enough for the worker's control traffic and for
tests that play the part of an LB or a server."""

import select
import socket
import struct
from typing import NamedTuple, Optional

from .config import AddressLike, as_address

CALL = 1
REPLY = 2
EXCEPTION = 3
ONEWAY = 4
HEARTBEAT = 20
STOP = 21
STOP_CONFIRM = 22

# TApplicationException types used on the wire.
UNKNOWN = 0
UNKNOWN_METHOD = 1
INTERNAL_ERROR = 6
PROTOCOL_ERROR = 7

DEFAULT_MAX_FRAME_SIZE = 16_384_000
_VERSION_1 = 0x80010000
_VERSION_MASK = 0xFFFF0000


class ProtocolError(Exception):
    """A frame or header that breaks SPEC section 2."""


class Message(NamedTuple):
    """One parsed message: ``payload`` is the frame without its length
    prefix (header + body), ``body_offset`` where the body starts in it."""

    kind: int
    name: str
    seqid: int
    payload: bytes
    body_offset: int

    @property
    def body(self) -> bytes:
        return self.payload[self.body_offset :]

    def frame(self) -> bytes:
        return struct.pack(">I", len(self.payload)) + self.payload


def parse_message(payload: bytes) -> Message:
    """Parses a strict-binary header; anything else is a ProtocolError."""
    if len(payload) < 12:
        raise ProtocolError(f"message of {len(payload)} bytes is too short")
    (word,) = struct.unpack_from(">I", payload, 0)
    if word & _VERSION_MASK != _VERSION_1:
        raise ProtocolError("not a strict binary message header (old or unknown protocol)")
    (n,) = struct.unpack_from(">i", payload, 4)
    if n < 0 or 8 + n + 4 > len(payload):
        raise ProtocolError(f"bad message name length {n}")
    name = payload[8 : 8 + n].decode("utf-8", "replace")
    (seqid,) = struct.unpack_from(">i", payload, 8 + n)
    return Message(word & 0xFF, name, seqid, bytes(payload), 12 + n)


def encode_message(kind: int, name: str, seqid: int, body: bytes = b"") -> bytes:
    """One framed strict-binary message."""
    nb = name.encode("utf-8")
    payload = (
        struct.pack(">Ii", _VERSION_1 | kind, len(nb)) + nb + struct.pack(">i", seqid) + body
    )
    return struct.pack(">I", len(payload)) + payload


def heartbeat(seqid: int = 0) -> bytes:
    return encode_message(HEARTBEAT, "ping", seqid)


def stop() -> bytes:
    return encode_message(STOP, "worker_stop", 0)


def stop_confirm() -> bytes:
    return encode_message(STOP_CONFIRM, "stop_confirm", 0)


def application_exception(name: str, seqid: int, kind: int, message: str) -> bytes:
    """An ``EXCEPTION`` message carrying a ``TApplicationException``."""
    mb = message.encode("utf-8")
    body = (
        struct.pack(">bhi", 11, 1, len(mb))
        + mb
        + struct.pack(">bhi", 8, 2, kind)
        + b"\x00"
    )
    return encode_message(EXCEPTION, name, seqid, body)


def read_application_exception(body: bytes):
    """``(type, message)`` of a ``TApplicationException`` body."""
    from thrift.Thrift import TApplicationException
    from thrift.protocol.TBinaryProtocol import TBinaryProtocol
    from thrift.transport.TTransport import TMemoryBuffer

    x = TApplicationException()
    x.read(TBinaryProtocol(TMemoryBuffer(body)))
    return x.type, x.message


def connect_socket(address: AddressLike, timeout: Optional[float]) -> socket.socket:
    """A connected socket to a TCP ``host:port`` or a Unix socket path."""
    a = as_address(address)
    if a.is_unix:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = a.text
    else:
        host, port = a.host_port()
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, target = infos[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    try:
        s.connect(target)
    except BaseException:
        s.close()
        raise
    return s


class FrameReader:
    """Reads frames from a socket whose reads may time out: a timeout keeps
    the partial frame, so the caller can poll flags and call again."""

    def __init__(self, sock: socket.socket, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self.sock = sock
        self.max_frame_size = max_frame_size
        self._buf = bytearray()

    def read(self, wait: Optional[float] = None) -> Optional[bytes]:
        """The next payload (frame without length prefix); None on a clean
        EOF between frames. Raises ``socket.timeout`` when no complete frame
        arrived within ``wait`` seconds (or the socket's own timeout when
        ``wait`` is None), ProtocolError on a bad length, ConnectionError on
        EOF inside a frame."""
        while True:
            payload = self.buffered()
            if payload is not None:
                return payload
            if wait is not None:
                readable, _, _ = select.select([self.sock], [], [], wait)
                if not readable:
                    raise socket.timeout("no complete frame yet")
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._buf:
                    raise ConnectionError("connection closed inside a frame")
                return None
            self._buf += chunk

    def buffered(self) -> Optional[bytes]:
        """The next payload if a whole frame is already buffered, else None
        (no I/O). Raises ProtocolError on a bad length."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = struct.unpack_from(">i", buf, 0)
        if n < 0 or n > self.max_frame_size:
            raise ProtocolError(f"frame length {n} outside 0..={self.max_frame_size}")
        if len(buf) < 4 + n:
            return None
        payload = bytes(buf[4 : 4 + n])
        del buf[: 4 + n]
        return payload
