"""``RpcException``: the base service's declared exception."""

from thrift.Thrift import TException, TType
from thrift.transport.TTransport import CReadableTransport


def read_struct(obj, iprot):
    """Reads ``obj``'s fields in place, by Thrift's C extension when the
    protocol and transport allow it."""
    if getattr(iprot, "_fast_decode", None) is not None and isinstance(iprot.trans, CReadableTransport):
        iprot._fast_decode(obj, iprot, [obj.__class__, obj.thrift_spec])
    else:
        iprot.readStruct(obj, obj.thrift_spec)
    return obj


def write_struct(obj, oprot):
    if getattr(oprot, "_fast_encode", None) is not None:
        oprot.trans.write(oprot._fast_encode(obj, [obj.__class__, obj.thrift_spec]))
    else:
        oprot.writeStruct(obj, obj.thrift_spec)


class _Read:
    """``Cls.read(iprot)`` returns a new instance (code from compilers 0.14
    and later); ``obj.read(iprot)`` fills ``obj`` (earlier compilers)."""

    def __get__(self, obj, cls):
        if obj is None:
            return lambda iprot: read_struct(cls(), iprot)
        return lambda iprot: read_struct(obj, iprot)


class RpcException(TException):
    """
    Attributes:
     - code
     - msg
    """

    thrift_spec = (
        None,
        (1, TType.I32, "code", None, None),
        (2, TType.STRING, "msg", "UTF8", None),
    )

    read = _Read()

    def __init__(self, code=None, msg=None):
        self.code = code
        self.msg = msg

    def write(self, oprot):
        write_struct(self, oprot)

    def validate(self):
        return

    def __str__(self):
        return repr(self)

    def __repr__(self):
        return "RpcException(code=%r, msg=%r)" % (self.code, self.msg)

    def __eq__(self, other):
        return isinstance(other, self.__class__) and (self.code, self.msg) == (other.code, other.msg)

    def __ne__(self, other):
        return not (self == other)

    def __hash__(self):
        return hash((self.__class__, self.code, self.msg))
