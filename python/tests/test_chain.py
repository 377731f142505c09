"""The real chain: Python client -> rpc-proxy -> rpc-lb -> workers (Python
RpcWorker and the Rust demo worker), and -> a Rust SDK service; rolling
restarts, LB stop, kill -9 and slow calls under load."""

import json
import signal
import threading
import time
import urllib.request

import pytest

pytest.importorskip("echo", reason="thrift compiler (thrift --gen py) not installed")

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol.TBinaryProtocol import TBinaryProtocol  # noqa: E402
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport.TSocket import TSocket  # noqa: E402
from thrift.transport.TTransport import TFramedTransport  # noqa: E402

import harness  # noqa: E402
from harness import free_port, wait_until  # noqa: E402
from rpc_sdk import ClientPool  # noqa: E402
from stack import Load, Stack  # noqa: E402


@pytest.fixture
def stack(procs, tmp_path):
    s = Stack(procs, tmp_path, zk=f"local:{tmp_path / 'registry'}")
    s.proxy()
    return s


def stock_client(address: str, service: str, timeout_ms: int = 10000):
    """A client built from the Thrift library alone, as any application has."""
    host, port = address.rsplit(":", 1)
    sock = TSocket(host, int(port))
    sock.setTimeout(timeout_ms)
    transport = TFramedTransport(sock)
    transport.open()
    proto = TMultiplexedProtocol(TBinaryProtocol(transport), service)
    return Echo.Client(proto), transport


def test_stock_thrift_client_to_rust_service(stack):
    stack.rust_service("echo")
    stack.wait_ready("echo")
    c, transport = stock_client(stack.proxy_address, "echo")
    try:
        assert c.echo("stock") == "stock"
        assert c.add(40, 2) == 42
        with pytest.raises(EchoError) as e:
            c.fail("from rust")
        assert e.value.message == "from rust"
        c.notify("fire and forget")
        assert c.echo("after oneway") == "after oneway"
    finally:
        transport.close()
    # The same through the SDK client, and an unknown service.
    with stack.client() as conn:
        assert conn.client(Echo.Client, "echo").echo("sdk") == "sdk"
        with pytest.raises(TApplicationException) as e:
            conn.client(Echo.Client, "no_such_service").echo("x")
        assert e.value.type == TApplicationException.UNKNOWN
        assert "no_such_service" in e.value.message
        assert conn.client(Echo.Client, "echo").echo("still") == "still"


def test_python_workers_behind_lb(stack):
    _, ini = stack.lb("pyecho", pool_size=2)
    w1, w2 = stack.py_worker(ini), stack.py_worker(ini)
    stack.wait_ready("pyecho")
    with ClientPool(stack.proxy_address, service="pyecho", size=4, timeout=10) as pool:
        with pool.client(Echo.Client) as c:
            assert c.add(2, 3) == 5
            with pytest.raises(EchoError):
                c.fail("declared")
            # A handler bug reaches the client as an exception...
            with pytest.raises(TApplicationException) as e:
                c.echo("raise:bug")
            assert e.value.type == TApplicationException.INTERNAL_ERROR
            # ...and the worker keeps serving on the same connections.
            assert c.echo("alive") == "alive"
        # Concurrent calls are spread over both workers.
        answers = []

        def call():
            with pool.client(Echo.Client) as c:
                answers.append(c.sleep(300))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert sorted(set(answers)) == sorted({str(w1.pid), str(w2.pid)})
    assert w1.alive() and w2.alive()


def test_rust_workers_behind_lb(stack):
    _, ini = stack.lb("rsecho", pool_size=2)
    stack.rust_worker(ini)
    stack.rust_worker(ini)
    stack.wait_ready("rsecho")
    with ClientPool(stack.proxy_address, service="rsecho", size=4, timeout=10) as pool:
        with pool.client(Echo.Client) as c:
            assert c.echo("to rust") == "to rust"
            assert c.add(-1, 1) == 0
            with pytest.raises(EchoError):
                c.fail("rust error")
        with Load(stack, "rsecho", threads=4) as load:
            load.progress(200)
        assert load.failures == []


def test_unix_sockets_end_to_end(procs, tmp_path):
    stack = Stack(procs, tmp_path, zk=f"local:{tmp_path / 'registry'}")
    stack.proxy(unix=True)
    _, ini = stack.lb("unixecho", pool_size=1, unix=True)
    stack.py_worker(ini)
    stack.wait_ready("unixecho")
    with stack.client() as conn:
        assert conn.client(Echo.Client, "unixecho").add(20, 1) == 21


def test_rolling_restart_of_workers_under_load(stack):
    _, ini = stack.lb("roll", pool_size=2)
    workers = [stack.py_worker(ini) for _ in range(2)]
    stack.wait_ready("roll")
    with Load(stack, "roll", threads=4, sleep_ms=20) as load:
        load.progress(50)
        for i in range(len(workers)):
            old = workers[i]
            new = stack.py_worker(ini)
            wait_until(lambda: load.answered_by(new.pid) > 0, 20, f"replacement {new.pid} to serve")
            old.signal(signal.SIGTERM)
            assert old.wait(15) == 0, old.log_tail()
            workers[i] = new
            load.progress(50)
    assert load.failures == [], load.failures[:5]
    assert all(w.alive() for w in workers)


def lb_workers(status_address: str) -> list:
    """The workers an LB's /status lists."""
    with urllib.request.urlopen(f"http://{status_address}/status", timeout=5) as r:
        return json.load(r)["workers"]


def test_rolling_restart_of_rust_workers_under_load(stack):
    status = f"127.0.0.1:{free_port()}"
    _, ini = stack.lb("rsroll", pool_size=2, metrics_address=status)
    workers = [stack.rust_worker(ini) for _ in range(2)]
    stack.wait_ready("rsroll")
    with Load(stack, "rsroll", threads=4, sleep_ms=20) as load:
        load.progress(50)
        for i in range(len(workers)):
            old = workers[i]
            known = max(w["id"] for w in lb_workers(status))
            workers[i] = stack.rust_worker(ini)
            # The Rust worker does not say who answered; the LB does.
            wait_until(
                lambda: any(w["id"] > known and w["served"] > 0 for w in lb_workers(status)),
                20,
                "the replacement worker to serve",
            )
            old.signal(signal.SIGTERM)
            assert old.wait(15) == 0, old.log_tail()
            load.progress(50)
    assert load.failures == [], load.failures[:5]


def test_stopping_one_of_two_lbs_under_load(stack):
    lb1, ini1 = stack.lb("twolb", pool_size=2)
    lb2, ini2 = stack.lb("twolb", pool_size=2)
    w1, w2 = stack.py_worker(ini1), stack.py_worker(ini2)
    stack.wait_ready("twolb")
    with Load(stack, "twolb", threads=4, sleep_ms=20) as load:
        wait_until(lambda: load.answered_by(w1.pid) and load.answered_by(w2.pid), 20,
                   "both LBs to serve")
        lb1.signal(signal.SIGTERM)
        assert lb1.wait(20) == 0, lb1.log_tail()
        before = load.answered_by(w2.pid)
        load.progress(100)
        assert load.answered_by(w2.pid) >= before + 100
    assert load.failures == [], load.failures[:5]
    assert lb2.alive()


def test_kill_9_worker_under_load_fails_at_most_its_pool(stack):
    pool_size = 2
    _, ini = stack.lb("kill", pool_size=pool_size)
    victim, survivor = stack.py_worker(ini), stack.py_worker(ini)
    stack.wait_ready("kill")
    with Load(stack, "kill", threads=4, sleep_ms=50) as load:
        wait_until(lambda: load.answered_by(victim.pid) and load.answered_by(survivor.pid), 20,
                   "both workers to serve")
        victim.signal(signal.SIGKILL)
        victim.wait(5)
        load.progress(100)
    print(f"kill -9 under load: {len(load.failures)} failed, {load.ok} succeeded")
    assert len(load.failures) <= pool_size, load.failures
    assert survivor.alive()


def test_slow_call_does_not_hold_up_fast_ones(stack):
    status = f"127.0.0.1:{free_port()}"
    _, ini = stack.lb("slow", pool_size=1, metrics_address=status)
    stack.py_worker(ini)
    stack.py_worker(ini)
    stack.wait_ready("slow")
    slow_done = threading.Event()

    def slow():
        with stack.client(timeout=15) as conn:
            conn.client(Echo.Client, "slow").sleep(3000)
        slow_done.set()

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: any(w["inflight"] == 1 for w in lb_workers(status)), 10,
               "the slow call to occupy a worker")
    with stack.client(timeout=10) as conn:
        c = conn.client(Echo.Client, "slow")
        for i in range(5):
            start = time.monotonic()
            assert c.echo(f"fast {i}") == f"fast {i}"
            assert time.monotonic() - start < 1.0
    assert not slow_done.is_set()
    t.join(10)
    assert slow_done.is_set()


def test_a_long_call_keeps_the_worker_connected(stack):
    # The LB drops a worker that leaves heartbeats unanswered for 1 s; a
    # pool_size 1 worker inside a 3 s call must still answer them.
    status = f"127.0.0.1:{free_port()}"
    _, ini = stack.lb("long", pool_size=1, unix=True, metrics_address=status,
                      heartbeat_interval_ms=100, heartbeat_timeout_ms=1000)
    stack.py_worker(ini)
    stack.wait_ready("long")
    (before,) = lb_workers(status)
    with stack.client(timeout=15) as conn:
        c = conn.client(Echo.Client, "long")
        assert c.sleep(3000).isdigit()
        assert c.echo("after") == "after"
    (after,) = lb_workers(status)
    assert after["id"] == before["id"], "the worker's connection was replaced"
    assert after["heartbeats_missed"] == 0, after


def test_prefetched_calls_wait_inside_python_workers_and_all_succeed(stack):
    # worker_prefetch = 1: once both pool-1 workers are busy, each holds one
    # more call, read while the first runs and served right after it.
    status = f"127.0.0.1:{free_port()}"
    _, ini = stack.lb("prefetch", pool_size=1, worker_prefetch=1, metrics_address=status)
    stack.py_worker(ini)
    stack.py_worker(ini)
    stack.wait_ready("prefetch")
    with Load(stack, "prefetch", threads=6, sleep_ms=20) as load:
        harness.wait_until(
            lambda: [w["inflight"] for w in lb_workers(status)] == [2, 2], 10,
            "two calls in each worker")
        load.progress(100)
    assert load.failures == []
    assert [w["capacity"] for w in lb_workers(status)] == [2, 2]
    assert len(load.answers) == 2, load.answers


@pytest.mark.skipif(not harness.STRICT and not harness.zookeeper_available(), reason="ZooKeeper (Debian zookeeper) not installed")
def test_chain_with_zookeeper(procs, tmp_path):
    zk = harness.ZkServer(tmp_path, procs)
    stack = Stack(procs, tmp_path, zk=zk.hosts)
    stack.proxy()
    _, ini = stack.lb("zkecho", pool_size=2)
    stack.py_worker(ini)
    stack.rust_service("zkrust")
    stack.wait_ready("zkecho", timeout=30)
    stack.wait_ready("zkrust", timeout=30)
    with stack.client() as conn:
        assert conn.client(Echo.Client, "zkecho").add(1, 1) == 2
        assert conn.client(Echo.Client, "zkrust").add(2, 2) == 4
