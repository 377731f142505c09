"""The original's client entry points::

    get_base_protocol("127.0.0.1:5550", timeout=5000)   # ms; or a socket path
    protocol = get_service_protocol("typo")
    client = TypoService.Client(protocol)

``get_base_protocol`` (alias ``get_transport``) sets up the process-wide
default transport to the local proxy and returns it; ``get_service_protocol``
builds a service's protocol on it (or on the ``transport`` given, e.g. one
from :class:`rpc_thrift.pool.ConnectionPool`). One transport carries one
call at a time: share it between threads through a pool instead.
"""

from .cython.cybinary_protocol import TCyBinaryProtocol
from .cython.cyframed_transport import TCyFramedTransport
from .protocol import TUtf8BinaryProtocol
from .transport import TAutoConnectFramedTransport, TRBuffSocket

__all__ = [
    "TAutoConnectFramedTransport",
    "TCyBinaryProtocol",
    "TCyFramedTransport",
    "TRBuffSocket",
    "TUtf8BinaryProtocol",
    "get_base_protocol",
    "get_fast_transport",
    "get_service_protocol",
    "get_transport",
]

_transport = None
_fast_transport = None


def _seconds(timeout_ms):
    return None if timeout_ms is None else timeout_ms / 1000.0


def _same(transport, endpoint, timeout):
    return (
        transport is not None
        and str(transport.address) == endpoint
        and transport.timeout == _seconds(timeout)
    )


def get_base_protocol(endpoint, timeout=5000):
    """The default transport to the proxy at ``endpoint`` (``host:port`` or
    a Unix socket path); ``timeout`` in ms bounds connecting and each reply
    (None: no limit). It connects at the first call."""
    return get_transport(endpoint, timeout)


def get_transport(endpoint, timeout=5000):
    """Same as :func:`get_base_protocol`. Called again with the same
    arguments it returns the same transport; with another endpoint or
    timeout it makes a new default (the original kept the first one)."""
    global _transport
    if not _same(_transport, endpoint, timeout):
        _transport = TAutoConnectFramedTransport(_socket(endpoint, timeout))
    return _transport


def get_fast_transport(endpoint, timeout=5000):
    """The default transport of ``fast=True`` protocols: connected at once
    (raises ``TTransportException`` if the proxy is unreachable) and
    reopened before a call after 20 minutes without one, as the original's."""
    global _fast_transport
    if not _same(_fast_transport, endpoint, timeout):
        t = TCyFramedTransport(_socket(endpoint, timeout), maxIdleTime=1200)
        t.open()
        _fast_transport = t
    return _fast_transport


def _socket(endpoint, timeout):
    if ":" in endpoint:
        host, _, port = endpoint.rpartition(":")
        sock = TRBuffSocket(host=host, port=int(port))
    else:
        sock = TRBuffSocket(unix_socket=endpoint)
    sock.setTimeout(timeout)
    return sock


def get_service_protocol(service, transport=None, logger=None, fastbinary=False, fast=False):
    """The protocol for ``service``'s generated ``Client``: calls go out as
    ``service:method``. ``transport`` defaults to the one set up by
    :func:`get_base_protocol` (``fast=True``: :func:`get_fast_transport`).
    ``logger`` logs each call's latency. ``fastbinary`` is ignored (as in
    the original); ``fast=True`` selects :class:`TCyBinaryProtocol`, which
    here is the same binary protocol with Thrift's C extension rather than
    the original's Cython one."""
    if fast:
        transport = transport or _fast_transport
        _require(transport, "get_fast_transport")
        return TCyBinaryProtocol(transport, service=service, logger=logger)
    transport = transport or _transport
    _require(transport, "get_base_protocol")
    return TUtf8BinaryProtocol(transport, service_name=service, logger=logger)


def _require(transport, setup):
    if transport is None:
        raise ValueError(f"no transport: call {setup}(endpoint) first or pass transport=")
