"""A mixed fleet in one product: our rpc-proxy routes stock Go, Java and
Python Thrift clients to a Java SDK service, a Go SDK service, a Rust SDK
service, Python workers (written against the original SDK's API) behind
rpc-lb, and to endpoints whose records were written the way the original
system's registrants wrote them. Real ZooKeeper, real processes, loopback.

Run by run.sh, which builds the Go and Java programs first and passes
where they are in MIXED_BUILD and MIXED_JAVA_CP."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
from thrift.transport import TSocket, TTransport

import harness
from harness import Procs, ZkServer, free_port, wait_until
from rpc_sdk import ProxyClient

from echo import Echo
from echo.ttypes import EchoError

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("MIXED_BUILD", os.path.join(HERE, "build"))
JAVA_CP = os.environ.get("MIXED_JAVA_CP", "")
MIXEDGO = os.path.join(BUILD, "mixedgo")
GO_SERVICE = os.path.join(BUILD, "echo-service")
JAVA = ["java", "-Xmx128m", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", JAVA_CP]
JAVA_NAME = "java-sdk-1"
CLIENTS = ["go", "java", "python"]
START_TIME = "2026-11-24 20:21:43"

# column -> registered service name
SERVICES = {
    "java_sdk": "java_echo",
    "go_sdk": "go_echo",
    "rust_sdk": "rust_echo",
    "py_workers_lb": "py_echo",
    "orig_go_record": "legacy_go",
    "orig_java_record": "legacy_java",
    "orig_extra_fields": "legacy_extra",
}
LEGACY = ("legacy_go", "legacy_java", "legacy_extra")


def spec_service_id(frontend: str) -> str:
    s = frontend.replace("/", "").replace(".", "_").replace(":", "_")
    return s[-20:]


def legacy_records(frontend: str) -> dict:
    """{node path: record bytes} for the three original-style endpoints,
    all in front of the same rpc-lb."""
    sid = spec_service_id(frontend)
    base = "/zk/product/test/services"
    # The original Go LB: json.Marshal of its ServiceEndpoint struct
    # (src/proxy/endpoint.go), every field, in struct order, compact.
    go_style = json.dumps({
        "service": "legacy_go", "service_id": sid, "frontend": frontend,
        "deploy_path": "/srv/legacy_go", "code_url_version": "git@host:team/echo.git@1a2b3c4",
        "hostname": "web-3", "start_time": START_TIME,
    }, separators=(",", ":"))
    # The original Java SDK: org.json's JSONObject (hash order), and
    # deploy_path / code_url_version left out when they were null.
    java_style = json.dumps({
        "start_time": START_TIME, "service_id": sid, "hostname": "web-4",
        "service": "legacy_java", "frontend": frontend,
    }, separators=(",", ":"))
    # Fields no reader knows, of every JSON type, pretty-printed, non-ASCII.
    extra = json.dumps({
        "service": "legacy_extra", "service_id": sid, "frontend": frontend,
        "deploy_path": "/srv/legacy_extra", "code_url_version": "",
        "hostname": "机器-5", "start_time": START_TIME,
        "weight": 3, "ratio": 0.5, "enabled": True, "owner": None,
        "tags": ["canary", 1], "meta": {"idc": "bj", "rack": {"row": 7}},
    }, indent=2, ensure_ascii=False)
    return {
        f"{base}/legacy_go/{sid}": go_style,
        f"{base}/legacy_java/{sid}": java_style,
        f"{base}/legacy_extra/{sid}": extra,
    }


class Piped:
    """A child whose stdin the test holds: closing it asks for the end;
    its first stdout line says it is ready, its last one is its result."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.err_path = os.path.join(str(log_dir), f"{name}.err")
        self._err = open(self.err_path, "ab")
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._err, text=True, start_new_session=True)
        self.first = self._line(60)

    def _line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.popen.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            self.kill()
            pytest.fail(f"{self.name} gave no output within {timeout}s:\n{self.err()}")
        return box[0].strip()

    def finish(self, timeout=30):
        self.popen.stdin.close()
        last = self._line(timeout)
        self.popen.wait(timeout)
        return last

    def err(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-3000:]

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self._err.close()


def run_json_lines(argv, timeout=90):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv[0]} failed ({out.returncode}):\n{out.stderr[-3000:]}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


# -- the stock Python client ---------------------------------------------------


def stock_client(proxy, service, timeout_s=10):
    """Apache Thrift's own classes, nothing from rpc_proxy."""
    host, port = proxy.rsplit(":", 1)
    sock = TSocket.TSocket(host, int(port))
    sock.setTimeout(timeout_s * 1000)
    transport = TTransport.TFramedTransport(sock)
    transport.open()
    proto = TBinaryProtocol.TBinaryProtocol(transport)
    return Echo.Client(TMultiplexedProtocol.TMultiplexedProtocol(proto, service)), transport


def python_probe(proxy, service):
    r = {"service": service, "error": ""}
    step = "connect"
    try:
        c, transport = stock_client(proxy, service)
        try:
            step = "echo"
            r["echo"] = c.echo("mixed from python")
            step = "add"
            r["add"] = c.add(40, 2)
            step = "echo who"
            r["who"] = c.echo("who")
            step = "echo pid"
            r["pid"] = c.echo("pid")
            step = "fail"
            try:
                c.fail("python asked")
                r["error"] = "fail: no exception"
            except EchoError as e:
                r["fail"] = f"EchoError: {e.message}"
        finally:
            transport.close()
    except Exception as e:
        r["error"] = f"{step}: {e!r}"
    return r


# -- the fleet -----------------------------------------------------------------


class Fleet:
    def __init__(self, tmp, procs: Procs):
        self.dir = str(tmp)
        self.procs = procs
        self.zk = ZkServer(tmp, procs)
        # A ZooKeeper that answers `ruok` may still drop or stall the first
        # sessions (a stalled handshake holds the Go library for over a
        # minute): start the fleet once it grants one.
        subprocess.run([MIXEDGO, "zkwait", "-zk", self.zk.hosts], check=True, timeout=60)
        self.addresses = {}
        proxy_port = free_port()
        self.proxy = f"127.0.0.1:{proxy_port}"
        ini = self.ini("proxy", proxy_address=self.proxy, rpc_timeout=10)
        self.proxy_proc = procs.start("rpc-proxy", [harness.require_bin("rpc-proxy"), "-c", ini])
        self.registrant = None

    def ini(self, name, **keys):
        keys = {"zk": self.zk.hosts, "product": "test", **keys}
        return harness.write_ini(os.path.join(self.dir, f"{name}.ini"), **keys)

    def service_ini(self, name, service, **keys):
        port = free_port()
        address = f"127.0.0.1:{port}"
        ini = self.ini(name, service=service, front_host="127.0.0.1", front_port=port,
                       quiet_period=1, **keys)
        return ini, address

    def java_service(self, name, service):
        ini, address = self.service_ini(name, service)
        p = self.procs.start(name, JAVA + ["rpcproxy.sdk.EchoServer", "-c", ini, name])
        return p, address

    def go_service(self, name, service):
        ini, address = self.service_ini(name, service)
        return self.procs.start(name, [GO_SERVICE, "-c", ini]), address

    def rust_service(self, name, service):
        ini, address = self.service_ini(name, service)
        p = self.procs.start(name, [harness.require_bin("rpc-demo"), "service", "-c", ini])
        return p, address

    def lb_with_legacy_worker(self, name, service):
        port = free_port()
        address = f"127.0.0.1:{port}"
        ini = self.ini(name, service=service, front_host="127.0.0.1", front_port=port,
                       back_address=os.path.join(self.dir, f"{name}.sock"), worker_pool_size=2,
                       register_delay=0, quiet_period=0.5, stop_timeout=10)
        lb = self.procs.start(name, [harness.require_bin("rpc-lb"), "-c", ini])
        worker = self.procs.start(f"{name}-worker",
                                  [sys.executable, os.path.join(HERE, "legacy_worker.py"), ini])
        return lb, worker, address

    def register_legacy(self, records):
        path = os.path.join(self.dir, "legacy-records.json")
        with open(path, "w") as f:
            json.dump(records, f)
        self.registrant = Piped("registrant", [MIXEDGO, "register", "-zk", self.zk.hosts,
                                               "-records", path], self.dir)
        assert self.registrant.first == f"registered {len(records)}", self.registrant.first

    def read_registry(self):
        return run_json_lines([MIXEDGO, "read", "-zk", self.zk.hosts, "-product", "test"])

    def wait_reachable(self, service, timeout=60):
        last = []

        def ok():
            dead = [p.name for p in self.procs.all if not p.alive()]
            if dead:
                pytest.fail(f"exited early: {dead}\n{self.procs.logs()}")
            r = python_probe(self.proxy, service)
            last[:] = [r["error"]]
            return not r["error"]

        try:
            wait_until(ok, timeout, f"{service} through the proxy", interval=0.2)
        except BaseException:
            print(f"last error for {service}: {last}\n{self.procs.logs()}")
            raise


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    for path, what in ((MIXEDGO, "mixedgo"), (GO_SERVICE, "echo-service")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{what} not built in {BUILD}: run tests/mixed/run.sh")
    if not JAVA_CP:
        pytest.fail("MIXED_JAVA_CP not set: run tests/mixed/run.sh")
    tmp = tmp_path_factory.mktemp("fleet")
    procs = Procs(tmp)
    f = None
    try:
        f = Fleet(tmp, procs)
        f.java, f.addresses["java_echo"] = f.java_service(JAVA_NAME, "java_echo")
        f.go, f.addresses["go_echo"] = f.go_service("go-sdk-1", "go_echo")
        f.rust, f.addresses["rust_echo"] = f.rust_service("rust-sdk-1", "rust_echo")
        f.lb, f.worker, lb_address = f.lb_with_legacy_worker("lb-1", "py_echo")
        for s in ("py_echo",) + LEGACY:
            f.addresses[s] = lb_address
        f.register_legacy(legacy_records(lb_address))
        for service in SERVICES.values():
            f.wait_reachable(service)
        yield f
    finally:
        if os.environ.get("MIXED_SHOW_LOGS"):
            print(procs.logs())
        if f is not None and f.registrant is not None:
            f.registrant.kill()
        procs.close()


@pytest.fixture(scope="module")
def probes(fleet):
    """Every client's answers from every service, each client run once."""
    services = list(SERVICES.values())
    by_client = {
        "go": run_json_lines([MIXEDGO, "probe", "-proxy", fleet.proxy,
                              "-services", ",".join(services)]),
        "java": run_json_lines(JAVA + ["MixedClient", "probe", fleet.proxy, ",".join(services)]),
        "python": [python_probe(fleet.proxy, s) for s in services],
    }
    return {c: {r["service"]: r for r in rows} for c, rows in by_client.items()}


# -- tests ---------------------------------------------------------------------


@pytest.mark.parametrize("column", list(SERVICES))
@pytest.mark.parametrize("client", CLIENTS)
def test_matrix(fleet, probes, client, column):
    """The client's calls reach the service's process and come back whole:
    a string, an i64, a declared exception, and an answer only that
    process gives."""
    service = SERVICES[column]
    r = probes[client].get(service)
    assert r is not None, f"{client} reported nothing for {service}"
    assert r["error"] == "", f"{client} -> {service}: {r['error']}"
    assert r["echo"] == f"mixed from {client}"
    assert r["add"] == 42
    assert r["fail"] == f"EchoError: {client} asked"
    if service == "java_echo":
        assert r["who"] == JAVA_NAME  # the Java handler's name for itself
    elif service == "go_echo":
        assert r["pid"] == str(fleet.go.pid)
    elif service == "rust_echo":
        # rpc-demo's echo answers its argument; that it was rpc-demo is
        # the registry's word (test_original_reader_reads_every_record).
        assert (r["who"], r["pid"]) == ("who", "pid")
    else:
        assert r["pid"] == str(fleet.worker.pid)


def test_original_reader_reads_every_record(fleet):
    """Every record in the product, ours and original-style, decodes into
    the original proxy's ServiceEndpoint with encoding/json, names its own
    service and node, and points at the process that serves it. So an
    original proxy or dashboard reading this ZooKeeper sees our services."""
    rows = fleet.read_registry()
    by_service = {}
    for r in rows:
        assert r["error"] == "", f"{r['service']}/{r['node']}: {r['error']} in {r['raw']!r}"
        by_service.setdefault(r["service"], []).append(r)
    assert set(SERVICES.values()) <= set(by_service), sorted(by_service)
    for service in SERVICES.values():
        [r] = by_service[service]
        e = r["endpoint"]
        assert e["service"] == service
        assert e["service_id"] == r["node"] == spec_service_id(e["frontend"])
        assert e["frontend"] == fleet.addresses[service]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", e["start_time"]), e
        assert e["hostname"], e


def test_sigterm_under_load_fails_no_call(fleet, tmp_path):
    """One service served by a Java, a Go and a Rust process; stock Go and
    Java clients and the Python SDK's client call it without pause while
    the Go process, then the Java one, get SIGTERM. No call fails, both
    exit cleanly, and their records leave the registry."""
    procs = Procs(tmp_path)
    loads = []
    stop = threading.Event()
    py = {"ok": 0, "failed": 0, "errors": [], "answers": {}}
    lock = threading.Lock()

    def py_load(i):
        conn = ProxyClient(fleet.proxy, timeout=15)
        c = conn.client(Echo.Client, "mixed")
        while not stop.is_set():
            try:
                who = c.sleep(20)
                with lock:
                    py["ok"] += 1
                    py["answers"][who] = py["answers"].get(who, 0) + 1
            except Exception as e:
                with lock:
                    py["failed"] += 1
                    py["errors"].append(f"python {i}: {e!r}")
        conn.close()

    threads = [threading.Thread(target=py_load, args=(i,), daemon=True) for i in range(2)]
    try:
        java, _ = fleet.java_service("java-mixed", "mixed")
        go, _ = fleet.go_service("go-mixed", "mixed")
        rust, _ = fleet.rust_service("rust-mixed", "mixed")
        for p in (java, go, rust):
            procs.all.append(p)
        java_who, go_who, rust_who = "java-mixed", str(go.pid), "slept 20 ms"

        def registered():
            return len([r for r in fleet.read_registry() if r["service"] == "mixed"])

        wait_until(lambda: registered() == 3, 60, "three endpoints of `mixed`", interval=0.3)
        fleet.wait_reachable("mixed")
        for t in threads:
            t.start()
        loads.append(Piped("go-load", [MIXEDGO, "load", "-proxy", fleet.proxy, "-service", "mixed",
                                       "-conns", "2", "-sleep-ms", "20"], tmp_path))
        loads.append(Piped("java-load", JAVA + ["MixedClient", "load", fleet.proxy, "mixed", "2", "20"],
                           tmp_path))
        assert [p.first for p in loads] == ["loading", "loading"]

        def seen(*who):
            with lock:
                return all(py["answers"].get(w) for w in who)

        def progress(n):
            with lock:
                target = py["ok"] + n
            wait_until(lambda: py["ok"] >= target, 30, f"{n} more python calls")

        wait_until(lambda: seen(java_who, go_who, rust_who), 30, "answers from all three")
        for victim in (go, java):
            progress(50)
            victim.signal(signal.SIGTERM)
            rc = victim.wait(30)
            assert rc == 0, f"{victim.name} exited {rc}:\n{victim.log_tail()}"
            progress(100)
        wait_until(lambda: registered() == 1, 10, "stopped services' records gone")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
        results = {}
        for p in loads:
            line = p.finish() if p.popen.poll() is None else ""
            results[p.name] = json.loads(line) if line.startswith("{") else {"failed": -1, "errors": [line]}
            p.kill()
        procs.close()
    results["python"] = py
    for name, r in results.items():
        assert r["failed"] == 0, f"{name}: {r['failed']} failed calls: {r['errors'][:5]}"
        assert r["ok"] > 0, f"{name} made no call"
    total = {}
    for r in results.values():
        for who, n in r["answers"].items():
            total[who] = total.get(who, 0) + n
    assert total.get(java_who) and total.get(go_who) and total.get(rust_who), total
    print(f"calls per process: {total}; per client: "
          f"{ {k: v['ok'] for k, v in results.items()} }")
