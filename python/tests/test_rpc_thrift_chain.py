"""rpc_thrift (the original SDK's API) against the real chain: a worker and
a client written exactly in the original README's style, the worker dialling
rpc-lb, the client calling through rpc-proxy, with ZooKeeper or the local
registry, over TCP and Unix sockets.

The service's IDL extends the original's base service
(``include "rpc_thrift.services.thrift"``), so its generated code imports
``rpc_thrift.services`` as the original users' code did."""

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if importlib.util.find_spec("rpc_thrift") is None:
    # An rpc_sdk installed before rpc_thrift existed: use the source tree's.
    sys.path.append(SRC)
    _EXTRA_PATH = [SRC]
else:
    _EXTRA_PATH = []

from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport.TTransport import TTransportException  # noqa: E402

import harness  # noqa: E402
from harness import wait_until  # noqa: E402
from rpc_thrift.pool import ConnectionPool  # noqa: E402
from rpc_thrift.utils import get_base_protocol, get_fast_transport, get_service_protocol  # noqa: E402
from stack import Stack  # noqa: E402

TYPO_IDL = """\
include "rpc_thrift.services.thrift"
namespace py typo

struct FixedTerm {
  1: string old,
  2: string new
}

struct TypoResult {
  1: string fixed,
  2: list<FixedTerm> fixes
}

service TypoService extends rpc_thrift.services.RpcServiceBase {
  TypoResult correct_typo(1: string query) throws (1: rpc_thrift.services.RpcException re),
  string slow(1: i32 ms),
  oneway void note(1: string text),
}
"""

# The original README's worker, with only the handler's body filled in.
README_WORKER = '''\
import os
import time

from typo.TypoService import Processor
from typo.ttypes import FixedTerm, TypoResult
from rpc_thrift.config import parse_config
from rpc_thrift.rpc_wrapper import rpc_wrapper_for_class_method
from rpc_thrift.worker import RpcWorker

MAPPINGS = [("teh", "the"), ("adn", "and")]


class TypoProcessor(object):
    @rpc_wrapper_for_class_method(None)
    def correct_typo(self, query):
        if query == "boom":
            raise ValueError("cannot correct " + query)
        result = TypoResult()
        result.fixed = query
        result.fixes = []
        for old, new in MAPPINGS:
            if old in result.fixed:
                result.fixed = result.fixed.replace(old, new)
                result.fixes.append(FixedTerm(old, new))
        return result

    def slow(self, ms):
        time.sleep(ms / 1000.0)
        return str(os.getpid())

    def note(self, text):
        with open(os.environ["TYPO_NOTES"], "a") as f:
            f.write(text + "\\n")

    def ping(self):
        pass


config_path = "%(config_path)s"
config = parse_config(config_path)
endpoint = config["back_address"]
service = config["service"]
worker_pool_size = int(config["worker_pool_size"])

processor = Processor(TypoProcessor())
s = RpcWorker(processor, endpoint, pool_size=worker_pool_size, service=service)
s.connect(endpoint)
s.run()
'''


@pytest.fixture(scope="module")
def typo_gen(tmp_path_factory):
    """Generates the typo service's code against the IDL rpc_thrift ships."""
    if shutil.which("thrift") is None:
        if harness.STRICT:
            pytest.fail("thrift compiler (Debian thrift-compiler) not installed")
        pytest.skip("thrift compiler not installed")
    import rpc_thrift

    d = tmp_path_factory.mktemp("typo-gen")
    (d / "typo.thrift").write_text(TYPO_IDL)
    out = d / "gen"
    out.mkdir()
    include_dir = os.path.dirname(rpc_thrift.__file__)
    subprocess.run(["thrift", "--gen", "py", "-I", include_dir, "-out", str(out), str(d / "typo.thrift")],
                   check=True, timeout=60)
    # Only the typo package: rpc_thrift must come from the SDK, not the compiler.
    shutil.rmtree(out / "rpc_thrift", ignore_errors=True)
    sys.path.insert(0, str(out))
    yield str(out)
    sys.path.remove(str(out))


def start_worker(procs, tmp_path, gen_dir, config_path, name="typo-worker"):
    """Runs the README's worker script on `config_path` as its own process."""
    script = tmp_path / f"{name}.py"
    script.write_text(README_WORKER % {"config_path": config_path})
    path = [gen_dir, *_EXTRA_PATH, os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in path if p),
           "TYPO_NOTES": str(tmp_path / "notes.txt")}
    return procs.start(name, [sys.executable, str(script)], env=env)


def typo_client(protocol):
    from typo.TypoService import Client

    return Client(protocol)


def wait_served(client, timeout=30):
    """Until a call reaches a worker through the proxy."""
    last = []

    def ok():
        try:
            client.ping()
            return True
        except Exception as e:
            last[:] = [repr(e)]
            return False

    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            pytest.fail(f"typo not served through the proxy in {timeout}s: {last}")
        time.sleep(0.1)


def lb_ini(tmp_path, zk, back_address, pool_size=2):
    """An rpc-lb config in the original's format (its README's keys)."""
    return harness.write_ini(
        tmp_path / "lb.ini", zk=zk, product="test", service="typo",
        front_host="127.0.0.1", front_port=harness.free_port(), back_address=back_address,
        worker_pool_size=pool_size, register_delay=0, quiet_period=0.5, stop_timeout=10)


@pytest.mark.skipif(not harness.STRICT and not harness.zookeeper_available(),
                    reason="ZooKeeper (Debian zookeeper) not installed")
def test_readme_worker_and_client_through_proxy_lb_and_zookeeper(procs, tmp_path, typo_gen):
    from typo.ttypes import FixedTerm

    from rpc_thrift.services.ttypes import RpcException

    zk = harness.ZkServer(tmp_path, procs)
    stack = Stack(procs, tmp_path, zk=zk.hosts)
    proxy = stack.proxy()
    ini = lb_ini(tmp_path, zk.hosts, f"127.0.0.1:{harness.free_port()}")
    procs.start("lb", [harness.require_bin("rpc-lb"), "-c", ini])
    worker = start_worker(procs, tmp_path, typo_gen, ini)

    # The README's client, verbatim but for the address.
    _ = get_base_protocol(proxy, timeout=5000)
    protocol = get_service_protocol("typo")
    _typo_client = typo_client(protocol)
    wait_served(_typo_client)

    rpc_result = _typo_client.correct_typo("teh cat adn dog")
    assert rpc_result.fixed == "the cat and dog"
    assert rpc_result.fixes == [FixedTerm("teh", "the"), FixedTerm("adn", "and")]
    # A handler error reaches the client as the declared RpcException.
    with pytest.raises(RpcException) as e:
        _typo_client.correct_typo("boom")
    assert "cannot correct boom" in e.value.msg and e.value.code == 0
    # ping1 is answered by the proxy itself, ping by the worker.
    _typo_client.ping1()
    _typo_client.ping()
    # Oneway calls get no reply; the next call is unaffected.
    _typo_client.note("fire and forget")
    assert _typo_client.slow(0) == str(worker.pid)
    wait_until(lambda: (tmp_path / "notes.txt").exists(), 10, "the oneway note")
    assert (tmp_path / "notes.txt").read_text() == "fire and forget\n"
    # An unknown service: the proxy's error; the transport stays usable.
    with pytest.raises(TApplicationException) as e:
        typo_client(get_service_protocol("no_such_service")).ping()
    assert e.value.type == TApplicationException.UNKNOWN
    assert _typo_client.correct_typo("teh").fixed == "the"

    # SIGTERM stops the worker gracefully: the call it is running completes.
    answer = []
    t = threading.Thread(target=lambda: answer.append(
        typo_client(get_service_protocol("typo", get_base_protocol(proxy, timeout=10000))).slow(1500)))
    t.start()
    time.sleep(0.5)
    worker.signal(signal.SIGTERM)
    t.join(15)
    assert answer == [str(worker.pid)]
    assert worker.wait(15) == 0, worker.log_tail()


def test_worker_before_lb_unix_sockets_fast_protocol_and_pool(procs, tmp_path, typo_gen, caplog):
    registry = f"local:{tmp_path / 'registry'}"
    stack = Stack(procs, tmp_path, zk=registry)
    proxy = stack.proxy(unix=True)
    back = str(tmp_path / "typo-back.sock")
    ini = lb_ini(tmp_path, registry, back, pool_size=2)
    # The worker starts first and keeps redialling until the LB is up.
    worker = start_worker(procs, tmp_path, typo_gen, ini)
    wait_until(lambda: "cannot reach LB" in worker.log_tail(), 10, "the worker to try the LB")
    assert worker.alive(), worker.log_tail()
    procs.start("lb", [harness.require_bin("rpc-lb"), "-c", ini])

    # fast=True: the original's Cython protocol, here the same wire format.
    get_fast_transport(proxy, timeout=5000)
    fast = typo_client(get_service_protocol("typo", fast=True))
    wait_served(fast)
    assert fast.correct_typo("teh").fixed == "the"
    fast.ping1()

    # A logger gets each call's latency.
    log = logging.getLogger("rpc_thrift_calls")
    with caplog.at_level(logging.INFO, logger="rpc_thrift_calls"):
        _ = get_base_protocol(proxy, timeout=5000)
        assert typo_client(get_service_protocol("typo", logger=log)).slow(50) == str(worker.pid)
    assert "[RPC] typo:slow[0] ends, Elapsed:" in caplog.text

    # The README's pool, shared by threads: at most `size` calls at once.
    pool = ConnectionPool(2, proxy)
    answers, errors = [], []

    def call(i):
        try:
            with pool.base_protocol(timeout=10) as base_protocol:
                protocol = get_service_protocol("typo", base_protocol)
                client = typo_client(protocol)
                answers.append(client.correct_typo(f"teh {i}").fixed)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert sorted(answers) == [f"the {i}" for i in range(6)]


def test_timeouts_are_milliseconds_and_the_transport_recovers(procs, tmp_path, typo_gen):
    registry = f"local:{tmp_path / 'registry'}"
    stack = Stack(procs, tmp_path, zk=registry)
    proxy = stack.proxy()
    # Room for the calls left running by the timeouts below.
    ini = lb_ini(tmp_path, registry, f"127.0.0.1:{harness.free_port()}", pool_size=4)
    procs.start("lb", [harness.require_bin("rpc-lb"), "-c", ini])
    worker = start_worker(procs, tmp_path, typo_gen, ini)

    get_base_protocol(proxy, timeout=5000)
    wait_served(typo_client(get_service_protocol("typo")))

    transport = get_base_protocol(proxy, timeout=300)
    client = typo_client(get_service_protocol("typo"))
    start = time.monotonic()
    with pytest.raises(TTransportException) as e:
        client.slow(2000)
    took = time.monotonic() - start
    assert e.value.type == TTransportException.TIMED_OUT
    assert 0.25 <= took < 1.5, took
    # The next call reconnects and is not confused by the late reply.
    assert client.slow(10) == str(worker.pid)
    assert transport.connects == 2

    # A pooled transport that timed out is closed, returned and reused.
    pool = ConnectionPool(1, proxy, timeout=300)
    with pytest.raises(TTransportException):
        with pool.base_protocol() as base_protocol:
            typo_client(get_service_protocol("typo", base_protocol)).slow(2000)
    with pool.base_protocol(timeout=1) as base_protocol:
        assert not base_protocol.isOpen()
        assert typo_client(get_service_protocol("typo", base_protocol)).correct_typo("adn").fixed == "and"


def test_in_process_worker_connect_prepare_exit_and_stop(procs, tmp_path, typo_gen):
    from typo.TypoService import Processor
    from typo.ttypes import TypoResult

    from rpc_thrift.worker import RpcWorker

    registry = f"local:{tmp_path / 'registry'}"
    stack = Stack(procs, tmp_path, zk=registry)
    proxy = stack.proxy()
    back = f"127.0.0.1:{harness.free_port()}"
    ini = lb_ini(tmp_path, registry, back, pool_size=1)
    procs.start("lb", [harness.require_bin("rpc-lb"), "-c", ini])
    served = []
    entered = threading.Event()

    class Handler:
        def slow(self, ms):
            entered.set()
            time.sleep(ms / 1000.0)
            return "late"

        def correct_typo(self, query):
            served.append(query)
            return TypoResult(fixed=query.upper(), fixes=[])

        def ping(self):
            pass

    def serve(worker):
        t = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
        t.start()
        return t

    # Constructed with a wrong address; connect() sets the LB to dial.
    w = RpcWorker(Processor(Handler()), "/nonexistent/lb.sock", pool_size=1, service="typo",
                  fastbinary=True)
    assert (w.unix_socket, w.host) == ("/nonexistent/lb.sock", None)
    w.connect(back)
    assert (w.host, w.port, w.unix_socket) == ("127.0.0.1", int(back.split(":")[1]), None)
    t = serve(w)
    assert w.connected.wait(10)
    get_base_protocol(proxy, timeout=5000)
    client = typo_client(get_service_protocol("typo"))
    wait_served(client)
    assert client.correct_typo("in process").fixed == "IN PROCESS"
    assert served == ["in process"]
    # prepare_exit: the graceful stop (STOP, confirmation, idle), run() returns.
    assert w.alive
    w.prepare_exit()
    assert not w.alive
    t.join(10)
    assert not t.is_alive()

    # stop(): at once, even with a call running (its caller gets an error).
    w2 = RpcWorker(Processor(Handler()), back, pool_size=1, service="typo")
    t2 = serve(w2)
    assert w2.connected.wait(10)
    outcome = []

    def slow_call():
        try:
            c = typo_client(get_service_protocol("typo", get_base_protocol(proxy, timeout=10000)))
            wait_served(c)
            outcome.append(c.slow(3000))
        except Exception as e:
            outcome.append(e)

    caller = threading.Thread(target=slow_call)
    caller.start()
    assert entered.wait(15)
    start = time.monotonic()
    w2.stop()
    t2.join(5)
    assert not t2.is_alive() and time.monotonic() - start < 2
    caller.join(10)
    (err,) = outcome
    assert isinstance(err, TApplicationException) and err.type == TApplicationException.INTERNAL_ERROR, err
