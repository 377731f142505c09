"""The original's worker, as its README ran it::

    config = parse_config("config.ini")
    endpoint = config["back_address"]
    processor = Processor(TypoProcessor())
    s = RpcWorker(processor, endpoint, pool_size=int(config["worker_pool_size"]),
                  service=config["service"])
    s.connect(endpoint)
    s.run()

It is :class:`rpc_sdk.RpcWorker` (SPEC section 5): one connection to the
LB, heartbeats echoed, 5 s without one means the LB is lost (redial with
backoff 1, 2, 4 s), and SIGTERM/SIGINT stop it gracefully (``STOP``, finish
what the LB sent, then ``run()`` returns). Concurrency is ``pool_size``
threads rather than gevent greenlets: nothing is monkey-patched.
"""

import os

from rpc_sdk.config import as_address
from rpc_sdk.worker import RpcWorker as _SdkWorker


class RpcWorker(_SdkWorker):
    """``RpcWorker(processor, address, pool_size=1, service=None,
    fastbinary=False)``. ``address`` is the LB's ``back_address``
    (``host:port`` or a Unix socket path); ``service`` only names the
    worker in logs; ``fastbinary`` is accepted and ignored (requests are
    always decoded by Thrift's C extension when it is installed)."""

    def __init__(self, processor, address, pool_size=1, service=None, fastbinary=False):
        super().__init__(processor, address, pool_size=pool_size)
        self.service = service
        self.fastbinary = fastbinary
        self.pid = os.getpid()
        self.connect(address)

    def connect(self, endpoint):
        """Sets the LB address to dial. The connection itself is made (and
        remade) by :meth:`run`, which retries until the LB is up."""
        self.address = as_address(endpoint)
        if self.address.is_unix:
            self.host, self.port, self.unix_socket = None, None, self.address.text
        else:
            self.host, self.port = self.address.host_port()
            self.unix_socket = None

    @property
    def alive(self):
        """False once a stop was asked for."""
        return not self._stop_requested

    def prepare_exit(self):
        """Graceful stop, what the original's SIGTERM handler did: ``STOP``
        to the LB, answer what it already sent, then :meth:`run` returns.
        (The original blocked here and called ``exit(0)``.)"""
        _SdkWorker.stop(self)

    def stop(self):
        """Stops at once, as the original's ``stop()`` (it killed the
        connection loop); calls in flight get no reply."""
        self.kill()
