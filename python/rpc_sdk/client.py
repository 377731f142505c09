"""Calling services through the local proxy (SPEC section 3).

A stock Thrift client works unchanged: :class:`ProxyClient` supplies the
framed transport + binary protocol + ``TMultiplexedProtocol(service)`` that
make method names ``service:method``::

    with ProxyClient("127.0.0.1:5550", timeout=5) as conn:
        echo = conn.client(Echo.Client, "echo")
        echo.echo("hi")

    pool = ClientPool("127.0.0.1:5550", service="echo", size=8)
    with pool.client(Echo.Client) as c:
        c.echo("hi")
"""

import contextlib
import select
import socket
import struct
import threading
from collections import deque
from io import BytesIO
from typing import Optional

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.protocol.TProtocol import TProtocolException
from thrift.transport.TTransport import CReadableTransport, TTransportBase, TTransportException

from . import wire
from .config import AddressLike, as_address

DEFAULT_PROXY_ADDRESS = "127.0.0.1:5550"


class ProxyTransport(TTransportBase, CReadableTransport):
    """Framed transport to the proxy that reconnects between calls.

    Before a request is written on a connection with no reply outstanding,
    the connection is checked: if the proxy closed it (or it failed) since
    the last call, a new one is dialled and the request goes there. A
    request is resent only when it provably did not reach the old
    connection, so a call is never executed twice. A failure while a reply
    is awaited (timeout, reset) closes the connection and raises; the next
    call reconnects. Replies are decoded by Thrift's C extension when it is
    available (the transport is a ``CReadableTransport``).
    """

    def __init__(
        self,
        address: AddressLike = DEFAULT_PROXY_ADDRESS,
        timeout: Optional[float] = 15.0,
        connect_timeout: Optional[float] = 5.0,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
    ):
        self.address = as_address(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_frame_size = max_frame_size
        self._sock: Optional[socket.socket] = None
        self._wbuf = bytearray()
        self._rbuf = BytesIO()
        # Requests written whose reply has not been read yet.
        self.pending = 0
        # Connections opened so far (observability; tests use it).
        self.connects = 0

    # -- TTransportBase --------------------------------------------------
    def isOpen(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        if self._sock is not None:
            return
        try:
            sock = wire.connect_socket(self.address, self.connect_timeout)
        except OSError as e:
            raise TTransportException(
                TTransportException.NOT_OPEN,
                f"cannot connect to proxy at {self.address}: {e}",
            ) from e
        sock.settimeout(self.timeout)
        self._sock = sock
        self.connects += 1

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._rbuf = BytesIO()
        self.pending = 0
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def write(self, buf) -> None:
        self._wbuf += buf

    def flush(self) -> None:
        payload = bytes(self._wbuf)
        self._wbuf = bytearray()
        if not payload:
            return
        if len(payload) > self.max_frame_size:
            raise TTransportException(
                TTransportException.UNKNOWN,
                f"request of {len(payload)} bytes exceeds max_frame_size {self.max_frame_size}",
            )
        frame = struct.pack(">I", len(payload)) + payload
        expects_reply = not (len(payload) >= 4 and payload[0] & 0x80 and payload[3] == wire.ONEWAY)
        if self._sock is not None and self.pending == 0 and not self._healthy():
            self.close()
        fresh = self._sock is None
        self.open()
        try:
            self._sock.sendall(frame)
        except OSError as e:
            # sendall failed, so the proxy cannot have a complete frame: when
            # nothing else was outstanding, one resend on a new connection is safe.
            retry = not fresh and self.pending == 0
            self.close()
            if not retry:
                raise _transport_error(e, "sending to proxy") from e
            self.open()
            try:
                self._sock.sendall(frame)
            except OSError as e2:
                self.close()
                raise _transport_error(e2, "sending to proxy") from e2
        if expects_reply:
            self.pending += 1

    def read(self, sz: int) -> bytes:
        out = self._rbuf.read(sz)
        if out:
            return out
        self._read_frame()
        return self._rbuf.read(sz)

    # -- CReadableTransport (used by the accelerated binary protocol) ----------
    @property
    def cstringio_buf(self):
        return self._rbuf

    def cstringio_refill(self, partialread: bytes, reqlen: int):
        # Called once the current frame is used up; a message never spans
        # frames, but follow the contract and keep reading frames.
        while len(partialread) < reqlen:
            self._read_frame()
            partialread += self._rbuf.getvalue()
        self._rbuf = BytesIO(partialread)
        return self._rbuf

    # -- internals ---------------------------------------------------------
    def _healthy(self) -> bool:
        """False if the idle connection was closed by the peer or holds
        unexpected bytes (either way it cannot carry the next call)."""
        sock = self._sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            return False  # EOF, an error, or stray data: all unusable
        except (OSError, ValueError):
            return False

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            try:
                chunk = self._sock.recv(min(n, 1 << 20))
            except socket.timeout as e:
                self.close()
                raise TTransportException(
                    TTransportException.TIMED_OUT,
                    f"no reply from proxy at {self.address} within {self.timeout}s",
                ) from e
            except OSError as e:
                self.close()
                raise _transport_error(e, "reading from proxy") from e
            if not chunk:
                self.close()
                raise TTransportException(
                    TTransportException.END_OF_FILE,
                    f"proxy at {self.address} closed the connection",
                )
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read_frame(self) -> None:
        if self._sock is None:
            raise TTransportException(TTransportException.NOT_OPEN, "not connected")
        (n,) = struct.unpack(">i", self._recv_exact(4))
        if n < 0 or n > self.max_frame_size:
            self.close()
            raise TTransportException(
                TTransportException.SIZE_LIMIT,
                f"reply frame length {n} outside 0..={self.max_frame_size}",
            )
        self._rbuf = BytesIO(self._recv_exact(n))
        if self.pending > 0:
            self.pending -= 1


def _transport_error(e: OSError, what: str) -> TTransportException:
    return TTransportException(TTransportException.UNKNOWN, f"{what}: {e}")


class ProxyClient:
    """One connection to the local proxy, shared by any number of service
    clients (one call at a time: not thread-safe, use :class:`ClientPool`
    across threads)."""

    def __init__(
        self,
        address: AddressLike = DEFAULT_PROXY_ADDRESS,
        timeout: Optional[float] = 15.0,
        connect_timeout: Optional[float] = 5.0,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
    ):
        self.transport = ProxyTransport(address, timeout, connect_timeout, max_frame_size)
        self._binary = TBinaryProtocolAccelerated(self.transport)

    def open(self) -> "ProxyClient":
        self.transport.open()
        return self

    def protocol(self, service: str) -> TMultiplexedProtocol:
        """The protocol to hand to a generated ``Client`` for ``service``."""
        if not service or ":" in service:
            raise ValueError(f"bad service name {service!r}")
        return TMultiplexedProtocol(self._binary, service)

    def client(self, client_class, service: str):
        """``client_class(protocol(service))``, e.g. ``client(Echo.Client, "echo")``."""
        return client_class(self.protocol(service))

    @property
    def usable(self) -> bool:
        """True unless a reply is still owed (the stream is out of step)."""
        return self.transport.pending == 0

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "ProxyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    address: AddressLike = DEFAULT_PROXY_ADDRESS,
    timeout: Optional[float] = 15.0,
    connect_timeout: Optional[float] = 5.0,
) -> ProxyClient:
    """An open :class:`ProxyClient` (raises ``TTransportException`` if the
    proxy cannot be reached)."""
    return ProxyClient(address, timeout, connect_timeout).open()


class PoolTimeout(TTransportException):
    """No connection became free within the pool's ``acquire_timeout``."""

    def __init__(self, message: str):
        super().__init__(TTransportException.TIMED_OUT, message)


# Errors after which a connection's stream can no longer be trusted.
_BROKEN = (TTransportException, TProtocolException, OSError, EOFError)


class ClientPool:
    """A thread-safe, bounded pool of proxy connections.

    At most ``size`` connections exist; a caller waits up to
    ``acquire_timeout`` seconds for one. A connection that failed (transport
    or protocol error, or a reply left unread) is closed, not returned.
    """

    def __init__(
        self,
        address: AddressLike = DEFAULT_PROXY_ADDRESS,
        service: Optional[str] = None,
        size: int = 8,
        timeout: Optional[float] = 15.0,
        connect_timeout: Optional[float] = 5.0,
        acquire_timeout: Optional[float] = None,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
    ):
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.address = as_address(address)
        self.service = service
        self.size = size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.acquire_timeout = timeout if acquire_timeout is None else acquire_timeout
        self.max_frame_size = max_frame_size
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: "deque[ProxyClient]" = deque()
        self._closed = False
        self.created = 0
        self.discarded = 0

    def _acquire(self) -> ProxyClient:
        if self._closed:
            raise TTransportException(TTransportException.NOT_OPEN, "pool is closed")
        if not self._slots.acquire(timeout=self.acquire_timeout):
            raise PoolTimeout(
                f"no free connection to {self.address} within {self.acquire_timeout}s"
            )
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        return ProxyClient(self.address, self.timeout, self.connect_timeout, self.max_frame_size)

    def _release(self, conn: ProxyClient, broken: bool) -> None:
        try:
            if broken or not conn.usable or self._closed:
                conn.close()
                with self._lock:
                    self.discarded += 1
            else:
                with self._lock:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    def connection(self) -> "_Lease":
        """A :class:`ProxyClient` for the duration of a ``with`` block."""
        return _Lease(self, None, None)

    def client(self, client_class, service: Optional[str] = None) -> "_Lease":
        """A generated client bound to a pooled connection:
        ``with pool.client(Echo.Client) as c: c.echo("x")``."""
        service = service or self.service
        if not service:
            raise ValueError("no service given and the pool has no default service")
        return _Lease(self, client_class, service)

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Closes idle connections; connections in use close when released."""
        self._closed = True
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for c in idle:
            c.close()

    def __enter__(self) -> "ClientPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Lease:
    """One checkout from a :class:`ClientPool`. A plain class rather than a
    generator context manager: generated Thrift exceptions are immutable,
    and re-raising through a generator would try to set their traceback."""

    def __init__(self, pool: ClientPool, client_class, service: Optional[str]):
        self._pool = pool
        self._client_class = client_class
        self._service = service
        self._conn: Optional[ProxyClient] = None

    def __enter__(self):
        self._conn = self._pool._acquire()
        if self._client_class is None:
            return self._conn
        return self._conn.client(self._client_class, self._service)

    def __exit__(self, exc_type, exc, tb) -> bool:
        conn, self._conn = self._conn, None
        # Application errors (declared exceptions, TApplicationException)
        # leave the stream in step; `usable` catches anything that did not.
        broken = exc_type is not None and issubclass(exc_type, _BROKEN)
        self._pool._release(conn, broken)
        return False
