"""The base service ``RpcServiceBase { void ping(); void ping1(); }``:
``Iface``, ``Client`` and ``Processor`` as ``thrift --gen py`` makes them,
for generated services that extend it.

As in the original, ``Client.ping1()`` tests the hop to the local proxy
only: it is sent as a HEARTBEAT, which the proxy answers itself (SPEC
section 3); ``ping()`` is a call to the service.
"""

import logging

from thrift.Thrift import TApplicationException, TMessageType, TProcessor, TType
from thrift.transport import TTransport

from .ttypes import _Read, read_struct, write_struct

HEARTBEAT = 20


class _Empty:
    """The argument and result structs of ``ping``/``ping1`` (no fields)."""

    thrift_spec = (None,)
    read = _Read()

    def write(self, oprot):
        write_struct(self, oprot)

    def validate(self):
        return

    def __eq__(self, other):
        return isinstance(other, self.__class__)

    def __hash__(self):
        return hash(self.__class__)


class ping_args(_Empty):
    pass


class ping_result(_Empty):
    pass


class ping1_args(_Empty):
    pass


class ping1_result(_Empty):
    pass


class Iface(object):
    def ping(self):
        pass

    def ping1(self):
        pass


class Client(Iface):
    def __init__(self, iprot, oprot=None):
        self._iprot = self._oprot = iprot
        if oprot is not None:
            self._oprot = oprot
        self._seqid = 0

    def ping(self):
        self.send_ping()
        self.recv_ping()

    def send_ping(self):
        self._send("ping", TMessageType.CALL, ping_args())

    def recv_ping(self):
        self._recv(ping_result())

    def ping1(self):
        self.send_ping1()
        self.recv_ping1()

    def send_ping1(self):
        self._send("ping", HEARTBEAT, ping1_args())

    def recv_ping1(self):
        self._recv(ping1_result())

    def _send(self, name, kind, args):
        self._oprot.writeMessageBegin(name, kind, self._seqid)
        args.write(self._oprot)
        self._oprot.writeMessageEnd()
        self._oprot.trans.flush()

    def _recv(self, result):
        iprot = self._iprot
        (fname, mtype, rseqid) = iprot.readMessageBegin()
        if mtype == TMessageType.EXCEPTION:
            x = TApplicationException()
            x.read(iprot)
            iprot.readMessageEnd()
            raise x
        read_struct(result, iprot)
        iprot.readMessageEnd()


class Processor(Iface, TProcessor):
    def __init__(self, handler):
        self._handler = handler
        self._processMap = {}
        self._processMap["ping"] = Processor.process_ping
        self._processMap["ping1"] = Processor.process_ping1
        self._on_message_begin = None

    def on_message_begin(self, func):
        self._on_message_begin = func

    def process(self, iprot, oprot):
        (name, type, seqid) = iprot.readMessageBegin()
        if self._on_message_begin:
            self._on_message_begin(name, type, seqid)
        if name not in self._processMap:
            iprot.skip(TType.STRUCT)
            iprot.readMessageEnd()
            x = TApplicationException(TApplicationException.UNKNOWN_METHOD, "Unknown function %s" % (name))
            oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
            x.write(oprot)
            oprot.writeMessageEnd()
            oprot.trans.flush()
            return
        self._processMap[name](self, seqid, iprot, oprot)
        return True

    def process_ping(self, seqid, iprot, oprot):
        self._serve("ping", seqid, iprot, oprot, ping_args(), ping_result(), self._handler.ping)

    def process_ping1(self, seqid, iprot, oprot):
        self._serve("ping1", seqid, iprot, oprot, ping1_args(), ping1_result(), self._handler.ping1)

    def _serve(self, name, seqid, iprot, oprot, args, result, method):
        read_struct(args, iprot)
        iprot.readMessageEnd()
        try:
            method()
            msg_type = TMessageType.REPLY
        except TTransport.TTransportException:
            raise
        except TApplicationException as ex:
            logging.exception("TApplication exception in handler")
            msg_type = TMessageType.EXCEPTION
            result = ex
        except Exception:
            logging.exception("Unexpected exception in handler")
            msg_type = TMessageType.EXCEPTION
            result = TApplicationException(TApplicationException.INTERNAL_ERROR, "Internal error")
        oprot.writeMessageBegin(name, msg_type, seqid)
        result.write(oprot)
        oprot.writeMessageEnd()
        oprot.trans.flush()
