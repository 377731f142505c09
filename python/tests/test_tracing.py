"""Tracing through rpc-proxy to stock Thrift servers: with `otlp_endpoint`
set, every call reaches the endpoint carrying its trace context as argument
field 32767, which a stock server (generated Python code, with the C
extension's binary protocol and with the pure one) skips: the calls are
answered as usual, and the spans reach the OTLP receiver."""

import contextlib
import json
import os
import re
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("echo", reason="thrift compiler (thrift --gen py) not installed")

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from echo_service import EchoHandler  # noqa: E402
from thrift.protocol.TBinaryProtocol import (  # noqa: E402
    TBinaryProtocol,
    TBinaryProtocolAcceleratedFactory,
    TBinaryProtocolFactory,
)
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol  # noqa: E402
from thrift.server.TServer import TThreadedServer  # noqa: E402
from thrift.transport import TSocket  # noqa: E402
from thrift.transport.TTransport import TFramedTransport, TTransportBase  # noqa: E402

from harness import free_port, wait_until  # noqa: E402
from stack import Stack  # noqa: E402

# The trace field as a stock server receives it: type STRING, id 32767,
# length 55, a W3C traceparent, then the struct's STOP byte.
TRACE_FIELD = re.compile(rb"\x0b\x7f\xff\x00\x00\x007(00-([0-9a-f]{32})-[0-9a-f]{16}-0[01])\x00")


class OtlpSink:
    """Accepts OTLP/HTTP exports and keeps their bodies."""

    def __init__(self):
        sink = self
        self.bodies = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink.lock:
                    sink.bodies.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> bytes:
        with self.lock:
            return b"".join(b for _, b in self.bodies)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Recording(TTransportBase):
    """A server's socket transport that keeps every byte it read."""

    def __init__(self, inner, log: bytearray, lock: threading.Lock):
        self.inner, self.log, self.lock = inner, log, lock

    def isOpen(self):
        return self.inner.isOpen()

    def open(self):
        self.inner.open()

    def close(self):
        self.inner.close()

    def read(self, sz):
        data = self.inner.read(sz)
        with self.lock:
            self.log.extend(data)
        return data

    def write(self, buf):
        self.inner.write(buf)

    def flush(self):
        self.inner.flush()


class StockServer:
    """The Echo service in thrift's own TThreadedServer (framed, the given
    binary protocol), recording what it read."""

    def __init__(self, protocol_factory):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.read = bytearray()
        lock = threading.Lock()
        self.lock = lock
        read = self.read

        class Factory:
            def getTransport(self, client):
                return TFramedTransport(Recording(client, read, lock))

        self.server = TThreadedServer(
            Echo.Processor(EchoHandler()), TSocket.TServerSocket("127.0.0.1", self.port),
            Factory(), protocol_factory,
        )
        self.server.daemon = True
        threading.Thread(target=self.server.serve, daemon=True).start()
        wait_until(lambda: self._listening(), 10, "the stock server to listen")

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False

    def traceparents(self):
        with self.lock:
            return [m.group(1).decode() for m in TRACE_FIELD.finditer(bytes(self.read))]


def register(registry_dir: str, service: str, address: str) -> None:
    """An endpoint record written by hand (kept until removed)."""
    service_id = address.replace(".", "_").replace(":", "_")[-20:]
    d = os.path.join(registry_dir, "test", "services", service)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{service_id}.tmp")
    with open(tmp, "w") as f:
        json.dump({"service": service, "service_id": service_id, "frontend": address}, f)
    os.rename(tmp, os.path.join(d, f"{service_id}.json"))


@pytest.mark.parametrize("protocol", ["accelerated", "pure"])
def test_stock_servers_answer_calls_carrying_the_trace_field(procs, tmp_path, protocol):
    factory = TBinaryProtocolAcceleratedFactory() if protocol == "accelerated" else TBinaryProtocolFactory()
    server = StockServer(factory)
    sink = OtlpSink()
    registry = str(tmp_path / "registry")
    register(registry, "stock", server.address)
    stack = Stack(procs, tmp_path, zk=f"local:{registry}")
    # A stock server does not echo the SPEC heartbeats (it would take one
    # for a call): the proxy sends none during the test.
    stack.proxy(otlp_endpoint=sink.url, trace_sample_ratio=1,
                heartbeat_interval_ms=600000, heartbeat_timeout_ms=1200000)
    proxy = procs.all[-1]
    try:
        stack.wait_ready("stock")
        before = len(server.traceparents())
        host, port = stack.proxy_address.rsplit(":", 1)
        sock = TSocket.TSocket(host, int(port))
        sock.setTimeout(10000)
        transport = TFramedTransport(sock)
        transport.open()
        c = Echo.Client(TMultiplexedProtocol(TBinaryProtocol(transport), "stock"))
        try:
            assert c.echo("traced") == "traced"
            assert c.add(40, 2) == 42
            with pytest.raises(EchoError) as e:
                c.fail("declared")
            assert e.value.message == "declared"
            c.notify("fire and forget")
            assert c.echo("after oneway") == "after oneway"
        finally:
            transport.close()
        # Each of the five calls reached the server with its own context.
        got = server.traceparents()[before:]
        assert len(got) == 5, got
        assert len(set(got)) == 5

        # A graceful stop sends the spans; each names a trace the server saw.
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(20) == 0
        exported = sink.received()
        for tp in got:
            trace_id = bytes.fromhex(tp.split("-")[1])
            assert trace_id in exported, f"no span of {tp} exported"
        assert all(path == "/v1/traces" for path, _ in sink.bodies)
    finally:
        sink.close()
        server.server.serverTransport.close()


def test_rust_service_answers_calls_carrying_the_trace_field(procs, tmp_path):
    """The same through the Thrift crate's generated code (rpc-demo's Echo
    service on the Rust SDK)."""
    sink = OtlpSink()
    stack = Stack(procs, tmp_path, zk=f"local:{tmp_path / 'registry'}")
    stack.proxy(otlp_endpoint=sink.url, trace_sample_ratio=1)
    proxy = procs.all[-1]
    try:
        stack.rust_service("echo")
        stack.wait_ready("echo")
        with stack.client() as conn:
            c = conn.client(Echo.Client, "echo")
            assert c.echo("traced") == "traced"
            assert c.add(40, 2) == 42
            with pytest.raises(EchoError):
                c.fail("declared")
            c.notify("fire and forget")
            assert c.echo("after oneway") == "after oneway"
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(20) == 0
        assert sink.received(), "no spans exported"
    finally:
        sink.close()
