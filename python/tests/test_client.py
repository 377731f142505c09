"""Proxy client and pool against a raw `service:method` server: names on
the wire, reconnect between calls, timeouts, pool bounds and thread safety."""

import os
import threading

import pytest

pytest.importorskip("echo", reason="thrift compiler (thrift --gen py) not installed")

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport.TTransport import TTransportException  # noqa: E402

import echo_service  # noqa: E402
from harness import MuxServer, free_port, wait_until  # noqa: E402
from rpc_sdk import ClientPool, PoolTimeout, ProxyClient, connect  # noqa: E402


@pytest.fixture
def tracker():
    return echo_service.Tracker()


@pytest.fixture
def server(tracker):
    s = MuxServer({"echo": echo_service.make_processor(tracker)})
    yield s
    s.close()


def test_stock_client_through_multiplexed_names(server):
    with connect(server.address, timeout=5) as conn:
        c = conn.client(Echo.Client, "echo")
        assert c.echo("hi") == "hi"
        assert c.add(20, 22) == 42
        with pytest.raises(EchoError) as e:
            c.fail("nope")
        assert e.value.message == "nope"
        with pytest.raises(TApplicationException):
            c.echo("raise:handler bug")
        assert c.echo("still usable") == "still usable"
        assert conn.transport.connects == 1


def test_service_names_are_checked(server):
    with connect(server.address, timeout=5) as conn:
        for bad in ("", "bad:name"):
            with pytest.raises(ValueError):
                conn.protocol(bad)


def test_oneway_leaves_no_reply_pending(server, tracker):
    with connect(server.address, timeout=5) as conn:
        c = conn.client(Echo.Client, "echo")
        c.notify("fire")
        assert conn.usable
        assert c.echo("next") == "next"
    wait_until(lambda: tracker.notes == ["fire"], 5, "oneway delivery")


def test_reconnects_after_the_server_closes_between_calls(tracker):
    s = MuxServer({"echo": echo_service.make_processor(tracker)}, close_after=1)
    try:
        with connect(s.address, timeout=5) as conn:
            c = conn.client(Echo.Client, "echo")
            for i in range(5):
                assert c.echo(f"call {i}") == f"call {i}"
                # The server closes the connection after each reply.
                wait_until(lambda: s.open_now == 0, 5, "server to close")
            assert conn.transport.connects == 5
    finally:
        s.close()


def test_reconnects_after_the_server_drops_idle_connections(server):
    with connect(server.address, timeout=5) as conn:
        c = conn.client(Echo.Client, "echo")
        assert c.echo("one") == "one"
        server.close_all()
        wait_until(lambda: server.open_now == 0, 5, "connections dropped")
        assert c.echo("two") == "two"
        assert conn.transport.connects == 2


def test_timeout_discards_the_connection_and_the_late_reply(server):
    with connect(server.address, timeout=0.3) as conn:
        c = conn.client(Echo.Client, "echo")
        with pytest.raises(TTransportException) as e:
            c.sleep(800)
        assert e.value.type == TTransportException.TIMED_OUT
        # The late reply of `sleep` must not be taken for this call's.
        assert c.echo("fresh") == "fresh"
        assert conn.transport.connects == 2


def test_connect_failure_is_clear():
    port = free_port()
    with pytest.raises(TTransportException) as e:
        connect(f"127.0.0.1:{port}", timeout=1, connect_timeout=1)
    assert e.value.type == TTransportException.NOT_OPEN
    assert str(port) in str(e.value)


def test_unix_socket_address(tmp_path, tracker):
    path = str(tmp_path / "proxy.sock")
    s = MuxServer({"echo": echo_service.make_processor(tracker)}, address=path)
    try:
        with ProxyClient(path, timeout=5) as conn:
            assert conn.client(Echo.Client, "echo").echo("unix") == "unix"
    finally:
        s.close()


def test_pool_is_thread_safe_and_bounded(server):
    pool = ClientPool(server.address, service="echo", size=4, timeout=5)
    errors = []

    def run(t):
        try:
            for i in range(40):
                msg = f"{t}-{i}"
                with pool.client(Echo.Client) as c:
                    got = c.echo(msg)
                if got != msg:
                    errors.append((msg, got))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert pool.created <= 4 and server.max_open <= 4
    assert pool.idle == pool.created and pool.discarded == 0
    pool.close()
    wait_until(lambda: server.open_now == 0, 5, "pool connections closed")


def test_pool_discards_broken_connections(server):
    with ClientPool(server.address, service="echo", size=2, timeout=0.3) as pool:
        with pytest.raises(TTransportException):
            with pool.client(Echo.Client) as c:
                c.sleep(800)
        assert pool.discarded == 1 and pool.idle == 0
        with pool.client(Echo.Client) as c:
            assert c.echo("ok") == "ok"
        # Application errors keep the connection.
        with pytest.raises(EchoError):
            with pool.client(Echo.Client) as c:
                c.fail("x")
        assert pool.discarded == 1 and pool.idle == 1


def test_pool_survives_server_restart(server):
    with ClientPool(server.address, service="echo", size=2, timeout=5) as pool:
        with pool.client(Echo.Client) as c:
            assert c.echo("a") == "a"
        server.close_all()
        wait_until(lambda: server.open_now == 0, 5, "connections dropped")
        with pool.client(Echo.Client) as c:
            assert c.echo("b") == "b"


def test_pool_acquire_times_out(server):
    with ClientPool(server.address, service="echo", size=1, timeout=5,
                    acquire_timeout=0.2) as pool:
        with pool.connection():
            with pytest.raises(PoolTimeout):
                with pool.connection():
                    pass
        with pool.client(Echo.Client) as c:
            assert c.add(1, 2) == 3


def test_pool_needs_a_service(server):
    with ClientPool(server.address, size=1) as pool:
        with pytest.raises(ValueError):
            with pool.client(Echo.Client):
                pass
        with pool.client(Echo.Client, "echo") as c:
            assert c.echo(str(os.getpid())) == str(os.getpid())
