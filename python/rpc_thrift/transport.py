"""The original's client transport: a framed connection to the local proxy
that connects on first use and reconnects after a failure. Here it is
:class:`rpc_sdk.ProxyTransport` (which also notices a connection the proxy
closed while idle, and never resends a call that may have arrived)."""

from thrift.transport.TSocket import TSocket

from rpc_sdk.client import ProxyTransport


class TRBuffSocket(TSocket):
    """Where to connect and the timeout (ms, ``setTimeout``), as the original
    took them: ``TRBuffSocket(host, port)`` or ``TRBuffSocket(unix_socket=path)``.
    Usable as a plain Thrift socket; :class:`TAutoConnectFramedTransport`
    reads its address and timeout and dials its own connection (read
    buffering, the original's reason for this class, is the transport's)."""


class TAutoConnectFramedTransport(ProxyTransport):
    """``TAutoConnectFramedTransport(TRBuffSocket(...))``: connects at the
    first flush; any failure closes the connection and the next call opens
    a new one. The socket's timeout bounds connecting and each reply."""

    def __init__(self, socket):
        self.socket = socket
        timeout = socket._timeout
        super().__init__(socket_endpoint(socket), timeout=timeout, connect_timeout=timeout)


def socket_endpoint(sock):
    """The address of a Thrift ``TSocket``: its Unix path or ``host:port``."""
    if sock._unix_socket:
        return sock._unix_socket
    return "%s:%d" % (sock.host or "localhost", sock.port)
