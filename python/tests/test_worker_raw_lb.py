"""RpcWorker against an LB written here from SPEC section 5: heartbeat echo,
replies by seqid, pool_size, handler errors, STOP on SIGTERM, redial."""

import signal
import threading
import time

import pytest

pytest.importorskip("echo", reason="thrift compiler (thrift --gen py) not installed")

from echo import Echo  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402

import echo_service  # noqa: E402
import harness  # noqa: E402
from harness import RawLB, decode_struct, wait_until  # noqa: E402
from rpc_sdk import RpcWorker, wire  # noqa: E402


@pytest.fixture
def lb():
    server = RawLB(heartbeat_interval=0.2)
    yield server
    server.close()


class InProcessWorker:
    """An RpcWorker on a thread of the test process."""

    def __init__(self, address, pool_size=1, **kw):
        self.tracker = echo_service.Tracker()
        kw.setdefault("heartbeat_timeout", 1.0)
        kw.setdefault("backoff", (0.1, 0.2))
        kw.setdefault("stop_timeout", 5.0)
        self.worker = RpcWorker(echo_service.make_processor(self.tracker), address, pool_size, **kw)
        self.thread = threading.Thread(target=self.worker.run, kwargs={"install_signals": False},
                                       daemon=True)
        self.thread.start()

    def stop(self, timeout=10.0):
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def workers():
    started = []

    def start(address, pool_size=1, **kw):
        w = InProcessWorker(address, pool_size, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.worker.kill()
        w.thread.join(5)


def echo_result(msg):
    assert msg.kind == wire.REPLY, msg
    return decode_struct(Echo.echo_result(), msg.body).success


def test_echoes_heartbeats_unchanged_and_answers_calls(lb, workers):
    workers(lb.address)
    link = lb.worker()
    link.send(wire.heartbeat(77))
    link.wait(lambda: wire.heartbeat(77) in link.echoes, 5, "heartbeat echo")
    link.call("echo", Echo.echo_args("hello"), seqid=41)
    link.call("add", Echo.add_args(2, 40), seqid=-3)
    assert echo_result(link.reply(41)) == "hello"
    m = link.reply(-3)
    assert (m.kind, m.name) == (wire.REPLY, "add")
    assert decode_struct(Echo.add_result(), m.body).success == 42


def test_pool_size_bounds_concurrency_and_replies_come_in_any_order(lb, workers):
    w = workers(lb.address, pool_size=3)
    link = lb.worker()
    start = time.monotonic()
    for seq in range(6):
        link.call("sleep", Echo.sleep_args(300), seqid=seq)
    link.call("echo", Echo.echo_args("quick"), seqid=100)
    for seq in range(6):
        assert link.reply(seq, timeout=10).kind == wire.REPLY
    elapsed = time.monotonic() - start
    assert echo_result(link.reply(100)) == "quick"
    assert w.tracker.max_running == 3
    # 6 calls of 0.3 s on 3 threads take two rounds, not one and not six.
    assert 0.55 < elapsed < 1.5, elapsed


def test_handler_errors_become_replies_and_the_worker_keeps_serving(lb, workers):
    workers(lb.address)
    link = lb.worker()
    link.call("echo", Echo.echo_args("raise:boom"), seqid=1)
    m = link.reply(1)
    assert (m.kind, m.name, m.seqid) == (wire.EXCEPTION, "echo", 1)
    kind, _ = wire.read_application_exception(m.body)
    assert kind == TApplicationException.INTERNAL_ERROR

    link.call("fail", Echo.fail_args("declared"), seqid=2)
    m = link.reply(2)
    assert m.kind == wire.REPLY
    assert decode_struct(Echo.fail_result(), m.body).error.message == "declared"

    link.send(wire.encode_message(wire.CALL, "no_such_method", 3, b"\x00"))
    m = link.reply(3)
    assert m.kind == wire.EXCEPTION
    assert wire.read_application_exception(m.body)[0] == TApplicationException.UNKNOWN_METHOD

    link.call("echo", Echo.echo_args("still here"), seqid=4)
    assert echo_result(link.reply(4)) == "still here"
    assert len(lb.links) == 1 and not link.closed


def test_oneway_runs_without_a_reply(lb, workers):
    w = workers(lb.address)
    link = lb.worker()
    link.call("notify", Echo.notify_args("note"), seqid=9, kind=wire.ONEWAY)
    wait_until(lambda: w.tracker.notes == ["note"], 5, "oneway handler")
    link.call("echo", Echo.echo_args("after"), seqid=10)
    assert echo_result(link.reply(10)) == "after"
    assert 9 not in link.replies


def test_graceful_stop_waits_for_confirm_and_inflight(lb, workers):
    w = workers(lb.address, pool_size=2)
    link = lb.worker()
    link.call("sleep", Echo.sleep_args(400), seqid=1)
    wait_until(lambda: w.worker.inflight == 1, 5, "call in flight")
    w.worker.stop()
    link.wait(lambda: link.stops, 5, "STOP")
    stop = link.stops[0]
    assert (stop.kind, stop.seqid, stop.body) == (wire.STOP, 0, b"")
    # Sent before the LB saw STOP: must still be answered.
    link.call("echo", Echo.echo_args("late"), seqid=2)
    assert echo_result(link.reply(2)) == "late"
    assert link.reply(1).kind == wire.REPLY
    time.sleep(0.3)  # idle, but not yet confirmed: the worker must wait
    assert w.thread.is_alive()
    link.send(wire.stop_confirm())
    w.thread.join(5)
    assert not w.thread.is_alive()
    assert len(link.stops) == 1


def test_stop_without_confirm_exits_after_stop_timeout_once_idle(lb, workers):
    w = workers(lb.address, stop_timeout=0.5)
    link = lb.worker()
    w.worker.stop()
    link.wait(lambda: link.stops, 5, "STOP")
    w.thread.join(5)
    assert not w.thread.is_alive()


def test_sigterm_sends_stop_and_exits_after_inflight(lb, procs, tmp_path):
    ini = harness.write_ini(tmp_path / "worker.ini", back_address=lb.address, worker_pool_size=2,
                            heartbeat_interval_ms=200, heartbeat_timeout_ms=1200)
    p = procs.start("py-worker", harness.python_worker_argv(ini))
    link = lb.worker(timeout=15)
    link.call("echo", Echo.echo_args("ready"), seqid=1)
    assert echo_result(link.reply(1, timeout=10)) == "ready"
    link.call("sleep", Echo.sleep_args(600), seqid=2)
    time.sleep(0.1)  # let the call reach the handler
    p.signal(signal.SIGTERM)
    link.wait(lambda: link.stops, 5, "STOP after SIGTERM")
    assert p.alive()
    link.send(wire.stop_confirm())
    assert link.reply(2, timeout=5).kind == wire.REPLY
    assert p.wait(10) == 0
    link.wait(lambda: link.closed, 5, "worker to close its connection")


def test_sigint_behaves_like_sigterm(lb, procs, tmp_path):
    ini = harness.write_ini(tmp_path / "worker.ini", back_address=lb.address)
    p = procs.start("py-worker", harness.python_worker_argv(ini))
    link = lb.worker(timeout=15)
    link.call("echo", Echo.echo_args("ready"), seqid=1)
    echo_result(link.reply(1, timeout=10))
    p.signal(signal.SIGINT)
    link.wait(lambda: link.stops, 5, "STOP after SIGINT")
    link.send(wire.stop_confirm())
    assert p.wait(10) == 0


def test_redials_when_heartbeats_stop():
    quiet = RawLB(heartbeat_interval=None)
    w = InProcessWorker(quiet.address, heartbeat_timeout=0.5, backoff=(0.1,))
    try:
        first = quiet.worker()
        first.wait(lambda: first.closed, 5, "worker to drop a silent LB")
        quiet.worker(1, timeout=5)
        wait_until(lambda: w.worker.connects >= 2, 5, "the worker to count its redial")
    finally:
        w.worker.kill()
        w.thread.join(5)
        quiet.close()


def test_heartbeats_keep_the_connection(lb, workers):
    w = workers(lb.address, heartbeat_timeout=0.6)
    link = lb.worker()
    time.sleep(1.5)  # over twice the heartbeat timeout, with heartbeats flowing
    assert not link.closed and w.worker.connects == 1
    assert len(link.echoes) >= 5


def test_redials_after_lb_restart_and_on_bad_frames(workers):
    port = harness.free_port()
    w = workers(f"127.0.0.1:{port}", backoff=(0.1, 0.2))
    time.sleep(0.3)  # nothing listens yet: the worker is backing off
    lb = RawLB(port=port)
    try:
        link = lb.worker(timeout=5)
        link.call("echo", Echo.echo_args("up"), seqid=1)
        assert echo_result(link.reply(1)) == "up"
        # An old-style (non-strict) header is rejected by closing the connection.
        link.send(b"\x00\x00\x00\x0d" + b"\x00\x00\x00\x04echo\x01\x00\x00\x00\x01")
        link.wait(lambda: link.closed, 5, "worker to drop the bad connection")
        second = lb.worker(1, timeout=5)
        second.call("echo", Echo.echo_args("again"), seqid=2)
        assert echo_result(second.reply(2)) == "again"
        assert w.worker.connects == 2
    finally:
        lb.close()


def test_a_lost_connection_is_redialled_at_once_but_not_twice_within_the_backoff(
        lb, workers):
    step = 1.0
    w = workers(lb.address, backoff=(step, 2 * step))
    # Closed by the LB (one that handed over to a successor listening on
    # the same address): redialled at once.
    first = lb.worker()
    wait_until(lambda: w.worker.connects == 1, 5, "the first connection counted")
    closed = time.monotonic()
    first.close()
    second = lb.worker(1, timeout=5)
    redial = time.monotonic() - closed
    assert redial < step / 2, f"redialled at once, not after {redial:.2f}s"
    # Closed again at once: an LB that accepts and closes is not spun on.
    wait_until(lambda: w.worker.connects == 2, 5, "the second connection counted")
    closed = time.monotonic()
    second.close()
    third = lb.worker(2, timeout=5)
    redial = time.monotonic() - closed
    assert redial >= step - 0.1, f"backed off only {redial:.2f}s"
    third.call("echo", Echo.echo_args("x"), seqid=1)
    assert echo_result(third.reply(1)) == "x"


def test_oversized_frame_closes_the_connection(lb, workers):
    workers(lb.address, max_frame_size=1024)
    link = lb.worker()
    link.send((4096).to_bytes(4, "big") + b"\x00" * 16)
    link.wait(lambda: link.closed, 5, "worker to drop the oversized frame")
    second = lb.worker(1)
    second.call("echo", Echo.echo_args("fine"), seqid=1)
    assert echo_result(second.reply(1)) == "fine"


def test_a_long_call_keeps_heartbeats_echoed(lb, workers):
    # pool_size 1: the only serving thread is inside the call, so the
    # worker's monitor reads and echoes until it is back.
    w = workers(lb.address, heartbeat_timeout=1.0)
    link = lb.worker()
    link.call("echo", Echo.echo_args("warm"), seqid=1)
    echo_result(link.reply(1))
    link.call("sleep", Echo.sleep_args(2500), seqid=2)
    wait_until(lambda: w.worker.inflight == 1, 5, "the long call to start")
    before = len(link.echoes)
    # Heartbeats go every 0.2 s: five echoes take about 1 s, the worker's
    # own timeout, and must all come while the call still runs.
    link.wait(lambda: len(link.echoes) - before >= 5, 2.0, "heartbeat echoes during the call")
    during = len(link.echoes) - before
    assert 2 not in link.replies, "the 2.5 s call ended too soon to tell"
    assert link.reply(2, timeout=10).kind == wire.REPLY
    assert during >= 5, f"only {during} heartbeats echoed during the call"
    assert not link.closed and w.worker.connects == 1
    link.call("echo", Echo.echo_args("after"), seqid=3)
    assert echo_result(link.reply(3)) == "after"


def test_calls_behind_a_long_call_start_without_waiting_for_it(lb, workers):
    # Both calls arrive together; the reader starts the first itself and
    # another thread takes over reading and the second call.
    w = workers(lb.address, pool_size=2)
    link = lb.worker()
    link.send(wire.encode_message(wire.CALL, "sleep", 1, harness.encode_struct(Echo.sleep_args(2000)))
              + wire.encode_message(wire.CALL, "echo", 2, harness.encode_struct(Echo.echo_args("quick"))))
    start = time.monotonic()
    assert echo_result(link.reply(2)) == "quick"
    assert time.monotonic() - start < 1.0
    assert w.worker.inflight == 1  # the long call still runs
    assert link.reply(1, timeout=10).kind == wire.REPLY


def test_batched_calls_are_all_answered(lb, workers):
    # Many calls in one write: served by the reader in turn, replies
    # written together.
    workers(lb.address, pool_size=4)
    link = lb.worker()
    link.send(b"".join(
        wire.encode_message(wire.CALL, "echo", seq, harness.encode_struct(Echo.echo_args(f"m{seq}")))
        for seq in range(200)
    ))
    for seq in range(200):
        assert echo_result(link.reply(seq)) == f"m{seq}"


def test_address_and_pool_size_come_from_the_environment(lb, monkeypatch):
    monkeypatch.setenv("RPC_BACK_ADDRESS", lb.address)
    monkeypatch.setenv("RPC_WORKER_POOL_SIZE", "3")
    worker = RpcWorker(echo_service.make_processor())
    assert (worker.address.text, worker.pool_size) == (lb.address, 3)
    monkeypatch.delenv("RPC_BACK_ADDRESS")
    with pytest.raises(ValueError, match="RPC_BACK_ADDRESS"):
        RpcWorker(echo_service.make_processor())


def test_worker_command_without_a_config_uses_the_environment(lb, procs):
    env = {"RPC_BACK_ADDRESS": lb.address, "RPC_WORKER_POOL_SIZE": "2"}
    argv = [a for a in harness.python_worker_argv("unused.ini")]
    i = argv.index("-c")
    del argv[i : i + 2]
    p = procs.start("py-worker-env", argv, env=env)
    link = lb.worker(timeout=15)
    link.call("echo", Echo.echo_args("from env"), seqid=1)
    assert echo_result(link.reply(1, timeout=10)) == "from env"
    p.signal(signal.SIGTERM)
    link.wait(lambda: link.stops, 5, "STOP after SIGTERM")
    link.send(wire.stop_confirm())
    assert p.wait(10) == 0
