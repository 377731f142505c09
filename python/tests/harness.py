"""Test utilities: free ports, bounded waits, managed processes, a raw LB and a
raw multiplexing server speaking SPEC frames, and a throwaway ZooKeeper."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.transport.TTransport import TMemoryBuffer

from rpc_sdk import wire

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    """Polls `cond` until truthy; fails the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def write_ini(path, **keys) -> str:
    with open(path, "w") as f:
        for k, v in keys.items():
            f.write(f"{k} = {v}\n")
    return str(path)


def encode_struct(struct) -> bytes:
    buf = TMemoryBuffer()
    struct.write(TBinaryProtocol(buf))
    return buf.getvalue()


def decode_struct(struct, body: bytes):
    struct.read(TBinaryProtocol(TMemoryBuffer(body)))
    return struct


# -- processes ---------------------------------------------------------------


class Proc:
    """A child process with its output in a log file; killed at teardown."""

    def __init__(self, name: str, argv: List[str], log_dir, env: Optional[Dict[str, str]] = None):
        self.name = name
        self.log_path = os.path.join(str(log_dir), f"{name}.log")
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout}s\n{self.log_tail()}")

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-n:]
        return ""


class Procs:
    """Starts processes for one test and kills what is left at teardown."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.all: List[Proc] = []

    def start(self, name, argv, env=None) -> Proc:
        p = Proc(name, argv, self.log_dir, env)
        self.all.append(p)
        return p

    def close(self) -> None:
        for p in self.all:
            p.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(2000)}" for p in self.all)


def bin_dir() -> Optional[str]:
    d = os.environ.get("RPC_BIN_DIR")
    if d:
        return d
    guess = os.path.join(TESTS_DIR, "..", "..", "target", "debug")
    return os.path.abspath(guess) if os.path.isdir(guess) else None


# Set by the README's test command: a missing binary, compiler or ZooKeeper
# is then a failure, not a skip, so nothing passes by being left out.
STRICT = os.environ.get("RPC_TESTS_STRICT") == "1"


def require_bin(name: str) -> str:
    d = bin_dir()
    path = os.path.join(d, name) if d else None
    if not path or not os.access(path, os.X_OK):
        why = f"binary {name} not built (set RPC_BIN_DIR to target/debug)"
        if STRICT:
            pytest.fail(why)
        pytest.skip(why)
    return path


# -- a raw LB (SPEC section 5) --------------------------------------------------


class WorkerLink:
    """The LB's side of one worker connection."""

    def __init__(self, sock: socket.socket, heartbeat_interval: Optional[float]):
        self.sock = sock
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.replies: Dict[int, wire.Message] = {}
        self.echoes: List[bytes] = []
        self.stops: List[wire.Message] = []
        self.other: List[wire.Message] = []
        self.closed = False
        self.error: Optional[str] = None
        self._stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if heartbeat_interval:
            threading.Thread(target=self._beat, args=(heartbeat_interval,), daemon=True).start()

    def send(self, frame: bytes) -> None:
        with self.lock:
            self.sock.sendall(frame)

    def call(self, method: str, args, seqid: int, kind: int = wire.CALL) -> None:
        self.send(wire.encode_message(kind, method, seqid, encode_struct(args)))

    def reply(self, seqid: int, timeout: float = 5.0) -> wire.Message:
        with self.cond:
            if not self.cond.wait_for(lambda: seqid in self.replies or self.closed, timeout):
                pytest.fail(f"no reply for seqid {seqid} within {timeout}s")
            if seqid not in self.replies:
                pytest.fail(f"worker connection closed before reply {seqid}: {self.error}")
            return self.replies.pop(seqid)

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(cond, timeout):
                pytest.fail(f"timed out after {timeout}s waiting for {what}")

    def _beat(self, interval: float) -> None:
        seq = 0
        while not self._stop.wait(interval):
            seq += 1
            try:
                self.send(wire.heartbeat(seq))
            except OSError:
                return

    def _read(self) -> None:
        reader = wire.FrameReader(self.sock)
        try:
            while True:
                payload = reader.read()
                if payload is None:
                    break
                m = wire.parse_message(payload)
                with self.cond:
                    if m.kind == wire.HEARTBEAT:
                        self.echoes.append(m.frame())
                    elif m.kind in (wire.REPLY, wire.EXCEPTION):
                        self.replies[m.seqid] = m
                    elif m.kind == wire.STOP:
                        self.stops.append(m)
                    else:
                        self.other.append(m)
                    self.cond.notify_all()
        except Exception as e:  # recorded for the test's failure message
            self.error = repr(e)
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class RawLB:
    """Listens on a loopback port like rpc-lb's back_address; each accepted
    worker connection becomes a WorkerLink (optionally sending heartbeats)."""

    def __init__(self, heartbeat_interval: Optional[float] = 0.2, port: int = 0):
        self.heartbeat_interval = heartbeat_interval
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.links: List[WorkerLink] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            link = WorkerLink(sock, self.heartbeat_interval)
            with self.cond:
                self.links.append(link)
                self.cond.notify_all()

    def worker(self, index: int = 0, timeout: float = 10.0) -> WorkerLink:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.links) > index, timeout):
                pytest.fail(f"worker connection #{index + 1} not made within {timeout}s")
            return self.links[index]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        for link in self.links:
            link.close()


# -- a raw multiplexing server (stands in for the proxy in client tests) -------


class MuxServer:
    """Serves `service:method` frames with a TMultiplexedProcessor, one
    thread per connection. `close_after` closes a connection after that many
    replies; `close_all()` drops every open connection."""

    def __init__(self, processors: Dict[str, object], address: Optional[str] = None,
                 close_after: Optional[int] = None):
        self.mux = TMultiplexedProcessor()
        for name, p in processors.items():
            self.mux.registerProcessor(name, p)
        self.close_after = close_after
        if address and ":" not in address:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(address)
            self.address = address
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen(64)
        self.lock = threading.Lock()
        self.conns: List[socket.socket] = []
        self.accepted = 0
        self.open_now = 0
        self.max_open = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(sock)
                self.accepted += 1
                self.open_now += 1
                self.max_open = max(self.max_open, self.open_now)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        reader = wire.FrameReader(sock)
        served = 0
        try:
            while True:
                payload = reader.read()
                if payload is None:
                    break
                out = TMemoryBuffer()
                self.mux.process(TBinaryProtocol(TMemoryBuffer(payload)), TBinaryProtocol(out))
                data = out.getvalue()
                if data:
                    sock.sendall(len(data).to_bytes(4, "big") + data)
                served += 1
                if self.close_after and served >= self.close_after:
                    break
        except Exception:
            pass  # a connection dropped by the test
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self.lock:
                self.open_now -= 1
                if sock in self.conns:
                    self.conns.remove(sock)

    def close_all(self) -> None:
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self.close_all()


# -- ZooKeeper ---------------------------------------------------------------------


ZK_HOME = "/usr/share/zookeeper"


def zookeeper_available() -> bool:
    return os.path.isdir(ZK_HOME) and shutil.which("java") is not None


class ZkServer:
    """A throwaway standalone ZooKeeper on a free loopback port."""

    def __init__(self, tmp_dir, procs: Procs):
        self.port = free_port()
        data = os.path.join(str(tmp_dir), "zk-data")
        os.makedirs(data, exist_ok=True)
        cfg = write_ini(
            os.path.join(str(tmp_dir), "zoo.cfg"),
            tickTime=200, dataDir=data, clientPort=self.port,
            clientPortAddress="127.0.0.1", maxClientCnxns=200,
            **{"admin.enableServer": "false", "4lw.commands.whitelist": "ruok"},
        )
        cp = f"{ZK_HOME}/*:{ZK_HOME}/lib/*:/usr/share/java/*"
        self.proc = procs.start(
            "zookeeper",
            ["java", "-Xmx256m", "-cp", cp, "org.apache.zookeeper.server.ZooKeeperServerMain", cfg],
        )
        wait_until(lambda: self._ruok() or not self.proc.alive(), 30, "ZooKeeper to start")
        if not self.proc.alive():
            pytest.fail(f"ZooKeeper exited:\n{self.proc.log_tail()}")

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ruok(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
            s.sendall(b"ruok")
            s.settimeout(1)
            return s.recv(4) == b"imok"
        return False


def python_worker_argv(config_path: str) -> List[str]:
    return [sys.executable, "-m", "rpc_sdk.worker", "-c", config_path,
            "--processor", "echo_service:make_processor"]
