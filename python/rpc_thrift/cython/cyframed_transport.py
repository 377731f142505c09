"""``TCyFramedTransport``: the original's Cython client transport, here
:class:`rpc_sdk.ProxyTransport` built from a Thrift socket."""

import time

from thrift.transport.TTransport import TTransportFactoryBase

from rpc_sdk.client import ProxyTransport

from ..transport import socket_endpoint

DEFAULT_BUFFER = 4096


class TCyFramedTransport(ProxyTransport):
    """``TCyFramedTransport(TSocket(...), maxIdleTime=s)``: a framed
    transport to the proxy at the socket's address, with its timeout.
    ``maxIdleTime`` > 0: a connection left unused that long is replaced
    before the next call. ``buf_size`` is accepted and ignored."""

    def __init__(self, trans, buf_size=DEFAULT_BUFFER, maxIdleTime=-1):
        self.trans = trans
        self.maxIdleTime = maxIdleTime
        self.lastAccessTime = time.time()
        timeout = trans._timeout
        super().__init__(socket_endpoint(trans), timeout=timeout, connect_timeout=timeout)

    def flush(self):
        now = time.time()
        if (self.maxIdleTime > 0 and self.pending == 0
                and now - self.lastAccessTime > self.maxIdleTime):
            self.close()
        self.lastAccessTime = now
        super().flush()

    def clean(self):
        """Drops buffered bytes and the connection (the original's reset)."""
        self._wbuf = bytearray()
        self.close()


class TCyFramedTransportFactory(TTransportFactoryBase):
    def get_transport(self, trans):
        return TCyFramedTransport(trans)

    getTransport = get_transport
