"""A bounded pool of proxy connections, as the original's README used it::

    pool = ConnectionPool(10, "127.0.0.1:5550")
    with pool.base_protocol() as base_protocol:
        protocol = get_service_protocol("typo", base_protocol)
        client = Client(protocol)
        client.correct_typo(text)

(The original module failed at import: it imported a helper its ``utils``
no longer had.)
"""

import logging
import queue

from thrift.protocol.TProtocol import TProtocolException
from thrift.transport.TTransport import TTransportException

from .utils import _socket
from .transport import TAutoConnectFramedTransport

logger = logging.getLogger(__name__)

# After these the connection's stream can no longer be trusted.
_BROKEN = (TTransportException, TProtocolException, OSError, EOFError)


class NoConnectionsAvailable(RuntimeError):
    """No connection became free within the ``timeout`` given to
    :meth:`ConnectionPool.base_protocol`."""


class ConnectionPool:
    """``size`` transports to the proxy at ``endpoint``, each connecting on
    first use; thread-safe. ``timeout`` (ms, as in ``get_base_protocol``;
    not in the original, which used that default) bounds connecting and
    each reply."""

    def __init__(self, size, endpoint, timeout=5000):
        if not isinstance(size, int):
            raise TypeError("Pool 'size' arg must be an integer")
        if not size > 0:
            raise ValueError("Pool 'size' arg must be greater than zero")
        logger.debug("Initializing connection pool with %d connections", size)
        self._queue = queue.LifoQueue(maxsize=size)
        for _ in range(size):
            self._queue.put(TAutoConnectFramedTransport(_socket(endpoint, timeout)))

    def _acquire_base_protocol(self, timeout=None):
        try:
            return self._queue.get(True, timeout)
        except queue.Empty:
            raise NoConnectionsAvailable(
                "No base_protocol available from pool within specified timeout") from None

    def _return_base_protocol(self, base_protocol):
        self._queue.put(base_protocol)

    def base_protocol(self, timeout=None):
        """A transport for ``get_service_protocol(service, transport)``, for
        the ``with`` block; waits up to ``timeout`` seconds (None: forever)
        for a free one, then raises :class:`NoConnectionsAvailable`. A
        transport that failed, or still owes a reply, is closed before it is
        returned (it reconnects at its next call); the original lost it."""
        return _Checkout(self, timeout)


class _Checkout:
    """One ``with pool.base_protocol()``. A class, not a generator: generated
    Thrift exceptions are immutable and a generator context manager would
    try to set their traceback when they pass through it."""

    def __init__(self, pool, timeout):
        self._pool = pool
        self._timeout = timeout
        self._transport = None

    def __enter__(self):
        self._transport = self._pool._acquire_base_protocol(self._timeout)
        return self._transport

    def __exit__(self, exc_type, exc, tb):
        transport, self._transport = self._transport, None
        try:
            if (exc_type is not None and issubclass(exc_type, _BROKEN)) or transport.pending:
                transport.close()
        finally:
            self._pool._return_base_protocol(transport)
        return False
