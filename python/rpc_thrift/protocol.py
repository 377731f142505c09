"""The original's client protocol: binary protocol whose calls are named
``service:method`` (SPEC section 3), on :class:`rpc_sdk.ProxyTransport`."""

import time

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.Thrift import TMessageType

SEPARATOR = ":"


class TUtf8BinaryProtocol(TBinaryProtocolAccelerated):
    """Prefixes ``service:`` to the names of ``CALL``/``ONEWAY`` messages
    (other types, e.g. a HEARTBEAT, go unprefixed), like
    ``TMultiplexedProtocol``. With a ``logger``, each reply is logged with
    the call's latency in ms.

    Strings go out as UTF-8: ``str`` is encoded, ``bytes`` (what Python 2
    code passed) are taken as already encoded. Structs are encoded and
    decoded by Thrift's C extension (``fastbinary``) when it is installed,
    whatever ``fastbinary`` says (the original ignored it too)."""

    def __init__(self, trans, service_name=None, fastbinary=False, logger=None):
        super().__init__(trans, strictRead=False, strictWrite=True)
        self.service_name_ = service_name + SEPARATOR if service_name else None
        self.logger = logger
        self.last_name = None
        self.start = None

    def writeString(self, v):
        if isinstance(v, (bytes, bytearray)):
            self.writeBinary(bytes(v))
        else:
            super().writeString(v)

    def wire_name(self, name, type):
        """The name a message of this type goes out with."""
        if self.service_name_ and type in (TMessageType.CALL, TMessageType.ONEWAY):
            return self.service_name_ + name
        return name

    def writeMessageBegin(self, name, type, seqid):
        self.start = time.time()
        self.last_name = self.wire_name(name, type)
        super().writeMessageBegin(self.last_name, type, seqid)

    def readMessageBegin(self):
        # The transport strips the frame length (the original's protocol
        # skipped those 4 bytes itself).
        name, type, seqid = super().readMessageBegin()
        if self.logger and self.start is not None:
            elapsed = (time.time() - self.start) * 1000
            self.logger.info("[RPC] %s[%s] ends, Elapsed: %.3fms", self.last_name, seqid, elapsed)
        return name, type, seqid
