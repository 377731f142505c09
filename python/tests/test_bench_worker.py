"""The Python bench worker (rpc_sdk.bench_worker): its replies are the bytes
rpc-bench expects (crates/bench/src/wire.rs), and rpc-bench run against an
rpc-lb with these workers checks every reply and passes."""

import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport.TTransport import TMemoryBuffer

import harness
from harness import free_port, wait_until
from rpc_sdk import bench_worker, wire

HAVE_THRIFT = shutil.which("thrift") is not None

IMPLS = [
    pytest.param("generated", marks=pytest.mark.skipif(
        not HAVE_THRIFT and not harness.STRICT, reason="thrift compiler not installed")),
    "builtin",
]


# -- the bytes, as crates/bench/src/wire.rs writes and checks them ------------


def call_payload(name: bytes, seqid: int, data: bytes, ms=None) -> bytes:
    """A strict CALL message (no length prefix), like wire::put_call."""
    body = b"\x0b\x00\x01" + struct.pack(">I", len(data)) + data
    if ms is not None:
        body += b"\x08\x00\x02" + struct.pack(">i", ms)
    body += b"\x00"
    return struct.pack(">II", 0x80010001, len(name)) + name + struct.pack(">i", seqid) + body


def expected_reply(name: bytes, seqid: int, data: bytes) -> bytes:
    """The framed reply {0: data}, like wire::reply_in_place."""
    msg = (struct.pack(">II", 0x80010002, len(name)) + name + struct.pack(">i", seqid)
           + b"\x0b\x00\x00" + struct.pack(">I", len(data)) + data + b"\x00")
    return struct.pack(">I", len(msg)) + msg


def expected_exception(name: bytes, seqid: int, kind: int, message: bytes) -> bytes:
    """A framed TApplicationException {1: message, 2: type}."""
    msg = (struct.pack(">II", 0x80010003, len(name)) + name + struct.pack(">i", seqid)
           + b"\x0b\x00\x01" + struct.pack(">I", len(message)) + message
           + b"\x08\x00\x02" + struct.pack(">i", kind) + b"\x00")
    return struct.pack(">I", len(msg)) + msg


def run(processor, payload: bytes) -> bytes:
    """What RpcWorker does with one request: the framed reply."""
    out = TMemoryBuffer()
    processor.process(TBinaryProtocolAccelerated(TMemoryBuffer(payload)),
                      TBinaryProtocolAccelerated(out))
    data = out.getvalue()
    return len(data).to_bytes(4, "big") + data


@pytest.fixture(scope="module")
def processors():
    return {}


def processor_for(impl, cache):
    if impl not in cache:
        cache[impl] = bench_worker.make_processor(impl)
    return cache[impl]


@pytest.mark.parametrize("impl", IMPLS)
def test_replies_are_the_bytes_rpc_bench_expects(impl, processors):
    p = processor_for(impl, processors)
    fill = bytes((i % 251) ^ 0x5A for i in range(70000))
    for n in [0, 3, 8, 64, 16 << 10, 70000]:
        data = fill[:n]
        assert run(p, call_payload(b"echo", 42, data)) == expected_reply(b"echo", 42, data)
        assert run(p, call_payload(b"sleep", -7, data, ms=1)) == expected_reply(b"sleep", -7, data)
    assert run(p, call_payload(b"fail", 9, b"x" * 64)) == expected_exception(
        b"fail", 9, wire.UNKNOWN, b"bench: fail requested")
    m = wire.parse_message(run(p, call_payload(b"nope", 5, b"x"))[4:])
    assert (m.kind, m.name, m.seqid) == (wire.EXCEPTION, "nope", 5)
    assert wire.read_application_exception(m.body)[0] == wire.UNKNOWN_METHOD


@pytest.mark.parametrize("impl", IMPLS)
def test_sleep_waits_ms_and_defaults_to_50(impl, processors):
    p = processor_for(impl, processors)
    t0 = time.monotonic()
    assert run(p, call_payload(b"sleep", 1, b"abc", ms=30)) == expected_reply(b"sleep", 1, b"abc")
    assert time.monotonic() - t0 >= 0.029
    t0 = time.monotonic()
    assert run(p, call_payload(b"sleep", 2, b"abc")) == expected_reply(b"sleep", 2, b"abc")
    assert time.monotonic() - t0 >= 0.049


@pytest.mark.skipif(not HAVE_THRIFT, reason="thrift compiler not installed")
def test_generated_code_is_used_when_the_compiler_exists():
    p = bench_worker.make_processor("auto")
    assert type(p).__name__ == "Processor"
    assert type(p).__module__ == "rpc_bench.bench"


# -- rpc-bench against rpc-lb with Python bench workers ---------------------------


def probe(port: int) -> bool:
    """One bare `echo` straight to the LB's front; True on the right reply."""
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(2)
            p = call_payload(b"echo", 7, b"probe")
            s.sendall(len(p).to_bytes(4, "big") + p)
            payload = wire.FrameReader(s).read()
            return payload is not None and (
                len(payload).to_bytes(4, "big") + payload == expected_reply(b"echo", 7, b"probe"))
    except (OSError, wire.ProtocolError):
        return False


@pytest.mark.parametrize("impl", IMPLS)
def test_rpc_bench_against_lb_with_python_bench_workers(impl, procs, tmp_path):
    lb_bin = harness.require_bin("rpc-lb")
    bench_bin = harness.require_bin("rpc-bench")
    front = free_port()
    back = str(tmp_path / "lb-back.sock")
    ini = harness.write_ini(
        tmp_path / "lb.ini", zk=f"local:{tmp_path / 'registry'}", product="test",
        service="benchpy", front_host="127.0.0.1", front_port=front, back_address=back,
        worker_pool_size=4, dispatch="least_loaded", register_delay=0,
    )
    lb = procs.start("lb", [lb_bin, "-c", ini])
    wait_until(lambda: harness.port_open(front) or not lb.alive(), 20, "rpc-lb to listen")
    assert lb.alive(), lb.log_tail()
    # As bench/run starts them (with the source tree on PYTHONPATH).
    workers = [
        procs.start(f"pyworker{i}", [sys.executable, "-m", "rpc_sdk.bench_worker", "-c", ini,
                                     "--back-address", back, "--pool-size", "4", "--impl", impl])
        for i in range(2)
    ]
    wait_until(lambda: probe(front) or not all(w.alive() for w in workers), 30,
               "an echo through rpc-lb to a Python bench worker")
    assert all(w.alive() for w in workers), procs.logs()

    out = tmp_path / "report.json"
    r = subprocess.run(
        [bench_bin, "-t", f"127.0.0.1:{front}", "--direct", "-c", "4", "-d", "4", "-p", "64",
         "-D", "1", "-w", "0.2", "--slow-fraction", "0.02", "--slow-ms", "5",
         "--fail-fraction", "0.02", "--timeout", "10", "-q", "--json", str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    detail = f"rpc-bench exit {r.returncode}\n{r.stderr[-3000:]}\n{report.get('errors')}\n{procs.logs()}"
    assert r.returncode == 0, detail
    c = report["counts"]
    assert report["passed"], detail
    assert c["ok"] > 0 and c["expected_exceptions"] > 0, c
    assert c["wrong"] == c["exceptions"] == c["lost"] == 0, c
    assert report["latency_slow"]["count"] > 0, report["latency_slow"]

    # Both workers stop gracefully on SIGTERM (STOP / STOP_CONFIRM).
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(15) == 0, w.log_tail()
    log = "".join(w.log_tail() for w in workers)
    assert "Traceback" not in log, log
