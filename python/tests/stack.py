"""Starts the real binaries (rpc-proxy, rpc-lb, rpc-demo) and Python workers
on loopback with a throwaway registry, and drives load through them."""

import os
import threading
import time
from typing import Dict, List, Optional

import pytest
from echo import Echo

import harness
from harness import Proc, Procs, free_port, wait_until
from rpc_sdk import ProxyClient


class Stack:
    def __init__(self, procs: Procs, tmp_path, zk: str):
        self.procs = procs
        self.dir = str(tmp_path)
        self.zk = zk
        self.proxy_address: Optional[str] = None
        self._n = 0

    def _ini(self, name: str, **keys) -> str:
        keys = {"zk": self.zk, "product": "test", **keys}
        return harness.write_ini(os.path.join(self.dir, f"{name}.ini"), **keys)

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}-{self._n}"

    def _started(self, p: Proc, port: Optional[int], path: Optional[str] = None) -> Proc:
        if port is not None:
            wait_until(lambda: harness.port_open(port) or not p.alive(), 20, f"{p.name} to listen")
        if path is not None:
            wait_until(lambda: os.path.exists(path) or not p.alive(), 20, f"{p.name} to listen")
        if not p.alive():
            pytest.fail(f"{p.name} exited at start:\n{p.log_tail()}")
        return p

    def proxy(self, unix: bool = False, **keys) -> str:
        name = self._name("proxy")
        if unix:
            address, port = os.path.join(self.dir, f"{name}.sock"), None
        else:
            port = free_port()
            address = f"127.0.0.1:{port}"
        ini = self._ini(name, proxy_address=address, rpc_timeout=10, **keys)
        p = self.procs.start(name, [harness.require_bin("rpc-proxy"), "-c", ini])
        self._started(p, port, None if port else address)
        self.proxy_address = address
        return address

    def lb(self, service: str = "echo", pool_size: int = 2, unix: bool = False, **keys):
        """An rpc-lb; returns (proc, worker ini path). With `unix`, workers
        dial it on a Unix socket."""
        front = free_port()
        name = self._name("lb")
        if unix:
            back, back_port = os.path.join(self.dir, f"{name}.sock"), None
        else:
            back_port = free_port()
            back = f"127.0.0.1:{back_port}"
        ini = self._ini(
            name, service=service, front_host="127.0.0.1", front_port=front,
            back_address=back, worker_pool_size=pool_size,
            register_delay=0, quiet_period=0.5, stop_timeout=10, **keys,
        )
        p = self.procs.start(name, [harness.require_bin("rpc-lb"), "-c", ini])
        self._started(p, back_port, None if back_port else back)
        return p, ini

    def py_worker(self, lb_ini: str) -> Proc:
        return self.procs.start(self._name("pyworker"), harness.python_worker_argv(lb_ini))

    def rust_worker(self, lb_ini: str) -> Proc:
        return self.procs.start(self._name("rsworker"),
                                [harness.require_bin("rpc-demo"), "worker", "-c", lb_ini])

    def rust_service(self, service: str = "echo") -> Proc:
        port = free_port()
        name = self._name("service")
        ini = self._ini(name, service=service, front_host="127.0.0.1", front_port=port)
        p = self.procs.start(name, [harness.require_bin("rpc-demo"), "service", "-c", ini])
        return self._started(p, port)

    def client(self, timeout: float = 10) -> ProxyClient:
        return ProxyClient(self.proxy_address, timeout=timeout)

    def wait_ready(self, service: str = "echo", timeout: float = 20) -> None:
        """Until a call to `service` through the proxy succeeds."""
        conn = self.client(timeout=5)
        c = conn.client(Echo.Client, service)
        last = []

        def ok():
            try:
                return c.echo("ready") == "ready"
            except Exception as e:
                last[:] = [repr(e)]
                return False

        try:
            end = time.monotonic() + timeout
            while not ok():
                if time.monotonic() > end:
                    pytest.fail(f"{service} not reachable through the proxy in {timeout}s: {last}")
                time.sleep(0.1)
        finally:
            conn.close()


class Load:
    """Threads calling `method` through the proxy until stopped, each on its
    own connection; every outcome is counted, failures kept for the report."""

    def __init__(self, stack: Stack, service: str = "echo", threads: int = 4,
                 sleep_ms: int = 0, timeout: float = 15):
        self.stack = stack
        self.service = service
        self.sleep_ms = sleep_ms
        self.timeout = timeout
        self.ok = 0
        self.failures: List[str] = []
        self.answers: Dict[str, int] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self.threads), "load threads hung"

    def _run(self, i: int) -> None:
        conn = ProxyClient(self.stack.proxy_address, timeout=self.timeout)
        c = conn.client(Echo.Client, self.service)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                # Python workers answer with their pid (see echo_service).
                if self.sleep_ms:
                    who = c.sleep(self.sleep_ms)
                else:
                    who = c.echo("pid")
                with self.lock:
                    self.ok += 1
                    self.answers[who] = self.answers.get(who, 0) + 1
            except Exception as e:
                with self.lock:
                    self.failures.append(f"thread {i} call {n}: {e!r}")
        conn.close()

    def count(self) -> int:
        with self.lock:
            return self.ok

    def answered_by(self, pid: int) -> int:
        with self.lock:
            return self.answers.get(str(pid), 0)

    def progress(self, calls: int, timeout: float = 20) -> None:
        """Until `calls` more calls have succeeded."""
        target = self.count() + calls
        wait_until(lambda: self.count() >= target, timeout, f"{calls} more successful calls")
