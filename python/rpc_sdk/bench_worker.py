"""The benchmark service (``bench/bench.thrift``) as a Python worker behind
``rpc-lb``, so that ``bench/run`` can measure the path with Python workers.

``echo`` answers ``data`` unchanged, ``sleep`` answers it after ``ms``
milliseconds (50 when the call carries no ``ms``, like ``rpc-bench-server``)
and ``fail`` answers a ``TApplicationException`` (type ``UNKNOWN``) whose
message is exactly ``bench: fail requested``. ``rpc-bench`` checks every
reply byte for byte; the replies are the ones a stock Thrift server writes
(``{0: data}``), which is also what ``rpc-bench-server`` writes.

The service code is generated at start-up by ``thrift --gen py`` from
``bench/bench.thrift`` (or from ``--idl``; an installed SDK without the
repository uses a copy of the IDL kept here) into a temporary directory
that is removed once the modules are imported. Without a ``thrift``
compiler, a hand-written processor that writes the same bytes is used
(``--impl builtin`` forces it, ``--impl generated`` requires the compiler).

Started by ``bench/run`` as::

    PYTHONPATH=python python -m rpc_sdk.bench_worker -c lb.ini --back-address /tmp/back.sock --pool-size 4
"""

import argparse
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from thrift.Thrift import TApplicationException, TMessageType, TType

from .config import Config
from .worker import RpcWorker

log = logging.getLogger("rpc_sdk.bench_worker")

#: The message ``fail`` answers with; rpc-bench compares it exactly.
FAIL_MESSAGE = "bench: fail requested"
#: ``sleep`` without ``ms`` (rpc-bench-server's ``default_sleep``).
DEFAULT_SLEEP_MS = 50

_REPO_IDL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "bench",
    "bench.thrift",
)

# Used when the SDK is installed away from the repository; keep in step
# with bench/bench.thrift.
_EMBEDDED_IDL = """\
namespace py rpc_bench
service bench {
  binary echo(1: binary data)
  binary sleep(1: binary data, 2: i32 ms)
  void fail(1: binary data)
}
"""

# The generated package (`namespace py rpc_bench`).
_GEN_PACKAGE = "rpc_bench"


class BenchHandler:
    """The service's methods, for the generated ``bench.Processor``."""

    def echo(self, data):
        return data

    def sleep(self, data, ms):
        time.sleep((DEFAULT_SLEEP_MS if ms is None else max(ms, 0)) / 1000.0)
        return data

    def fail(self, data):
        raise TApplicationException(TApplicationException.UNKNOWN, FAIL_MESSAGE)


class _QuietExpectedFail(logging.Filter):
    """The generated processor logs every ``TApplicationException`` raised by
    a handler with a traceback; ``fail`` raises one on purpose."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, TApplicationException) and exc.message == FAIL_MESSAGE)


def generate(idl: Optional[str] = None, thrift: str = "thrift"):
    """Runs ``thrift --gen py`` on the bench IDL into a temporary directory
    and imports the generated service module (``rpc_bench.bench``)."""
    out = tempfile.mkdtemp(prefix="rpc-bench-py-")
    try:
        if idl is None:
            if os.path.exists(_REPO_IDL):
                idl = _REPO_IDL
            else:
                idl = os.path.join(out, "bench.thrift")
                with open(idl, "w") as f:
                    f.write(_EMBEDDED_IDL)
        gen = os.path.join(out, "gen")
        os.mkdir(gen)
        r = subprocess.run(
            [thrift, "--gen", "py", "-out", gen, idl],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"thrift --gen py {idl} failed: {r.stderr.strip() or r.stdout.strip()}")
        for name in list(sys.modules):
            if name == _GEN_PACKAGE or name.startswith(_GEN_PACKAGE + "."):
                del sys.modules[name]
        sys.path.insert(0, gen)
        try:
            module = importlib.import_module(_GEN_PACKAGE + ".bench")
        finally:
            sys.path.remove(gen)
        return module
    finally:
        # Everything the service needs is imported by now.
        shutil.rmtree(out, ignore_errors=True)


class BuiltinProcessor:
    """What the generated ``bench.Processor`` does, written by hand (used
    when no ``thrift`` compiler is installed); the same reply bytes."""

    def __init__(self, handler=None):
        self._handler = handler or BenchHandler()

    def process(self, iprot, oprot):
        name, _mtype, seqid = iprot.readMessageBegin()
        if name not in ("echo", "sleep", "fail"):
            iprot.skip(TType.STRUCT)
            iprot.readMessageEnd()
            self._write(oprot, name, TMessageType.EXCEPTION, seqid,
                        TApplicationException(TApplicationException.UNKNOWN_METHOD,
                                              "Unknown function %s" % name))
            return
        data, ms = None, None
        iprot.readStructBegin()
        while True:
            _fname, ftype, fid = iprot.readFieldBegin()
            if ftype == TType.STOP:
                break
            if fid == 1 and ftype == TType.STRING:
                data = iprot.readBinary()
            elif fid == 2 and ftype == TType.I32 and name == "sleep":
                ms = iprot.readI32()
            else:
                iprot.skip(ftype)
            iprot.readFieldEnd()
        iprot.readStructEnd()
        iprot.readMessageEnd()
        try:
            if name == "fail":
                self._handler.fail(data)
                result = None
            elif name == "sleep":
                result = self._handler.sleep(data, ms)
            else:
                result = self._handler.echo(data)
        except TApplicationException as e:
            self._write(oprot, name, TMessageType.EXCEPTION, seqid, e)
            return
        except Exception:
            log.exception("unexpected exception in handler")
            self._write(oprot, name, TMessageType.EXCEPTION, seqid,
                        TApplicationException(TApplicationException.INTERNAL_ERROR, "Internal error"))
            return
        oprot.writeMessageBegin(name, TMessageType.REPLY, seqid)
        oprot.writeStructBegin(name + "_result")
        if result is not None:
            oprot.writeFieldBegin("success", TType.STRING, 0)
            oprot.writeBinary(result)
            oprot.writeFieldEnd()
        oprot.writeFieldStop()
        oprot.writeStructEnd()
        oprot.writeMessageEnd()
        oprot.trans.flush()

    @staticmethod
    def _write(oprot, name, mtype, seqid, exc):
        oprot.writeMessageBegin(name, mtype, seqid)
        exc.write(oprot)
        oprot.writeMessageEnd()
        oprot.trans.flush()


def make_processor(impl: str = "auto", idl: Optional[str] = None, thrift: str = "thrift"):
    """The bench service's processor: ``generated`` (``thrift --gen py``),
    ``builtin`` (hand-written), or ``auto`` (generated when a ``thrift``
    compiler is on the PATH)."""
    if impl not in ("auto", "generated", "builtin"):
        raise ValueError(f"impl must be auto, generated or builtin, not {impl!r}")
    if impl == "auto":
        impl = "generated" if shutil.which(thrift) else "builtin"
        if impl == "builtin":
            log.info("no %s compiler on the PATH: using the built-in bench processor", thrift)
    if impl == "builtin":
        return BuiltinProcessor()
    module = generate(idl, thrift)
    return module.Processor(BenchHandler())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rpc_sdk.bench_worker",
        description="Serve the benchmark service (bench/bench.thrift) to an rpc-lb.",
    )
    p.add_argument("-c", "--config", required=True, help="config.ini (back_address, worker_pool_size)")
    p.add_argument("--back-address", help="override back_address")
    p.add_argument("--pool-size", type=int, help="override worker_pool_size")
    p.add_argument("--impl", choices=["auto", "generated", "builtin"], default="auto",
                   help="generated: thrift --gen py at start-up; builtin: hand-written; "
                        "auto (default): generated when a thrift compiler is installed")
    p.add_argument("--idl", help="bench.thrift to generate from (default: the repository's)")
    p.add_argument("--thrift", default="thrift", help="the thrift compiler")
    p.add_argument("-L", "--log-file", help="log to this file instead of stderr")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        filename=args.log_file,
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger().addFilter(_QuietExpectedFail())
    config = Config.load(args.config)
    if args.back_address:
        config.set("back_address", args.back_address)
    if args.pool_size:
        config.set("worker_pool_size", str(args.pool_size))
    try:
        processor = make_processor(args.impl, args.idl, args.thrift)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.error("cannot build the bench processor: %s", e)
        return 2
    log.info("bench worker: %s processor", type(processor).__module__ + "." + type(processor).__name__)
    RpcWorker.from_config(processor, config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
