"""rpc-lb supervising its Python workers (`worker_command`): crash restart,
recycling after `worker_max_requests`, SIGHUP reload and SIGTERM, all under
load through the proxy, with the workers' pids read from the LB's status."""

import json
import os
import signal
import sys
import time
import urllib.request

import pytest

pytest.importorskip("echo", reason="thrift compiler (thrift --gen py) not installed")

from harness import free_port, wait_until  # noqa: E402
from stack import Load, Stack  # noqa: E402

WORKER = f"{sys.executable} -m rpc_sdk.worker --processor echo_service:make_processor"


@pytest.fixture
def stack(procs, tmp_path):
    s = Stack(procs, tmp_path, zk=f"local:{tmp_path / 'registry'}")
    s.proxy()
    return s


def status(address: str) -> dict:
    with urllib.request.urlopen(f"http://{address}/status", timeout=5) as r:
        return json.load(r)


def supervised_pids(address: str) -> list:
    return [w["pid"] for w in status(address)["supervised"]]


def serving_pids(address: str) -> set:
    return {w["pid"] for w in status(address)["workers"] if w["state"] == "serving"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def supervised_lb(stack, count=2, **keys):
    page = f"127.0.0.1:{free_port()}"
    lb, _ = stack.lb("sup", pool_size=1, unix=True, metrics_address=page,
                     worker_command=WORKER, worker_count=count, **keys)
    wait_until(lambda: len(serving_pids(page)) == count, 30, f"{count} supervised workers serving")
    stack.wait_ready("sup")
    return lb, page


def test_workers_are_started_with_the_lbs_address_and_shown_on_the_status_page(stack):
    _, page = supervised_lb(stack, count=3)
    pids = supervised_pids(page)
    assert len(pids) == 3 and set(pids) == serving_pids(page)
    with urllib.request.urlopen(f"http://{page}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for pid in pids:
        assert f'pid="{pid}"' in metrics
    assert "rpc_lb_supervised_worker_restarts" in metrics
    for slot in status(page)["supervised"]:
        assert slot["restarts"] == 0 and slot["age_s"] >= 0


def test_a_killed_worker_is_restarted_and_only_its_calls_fail(stack):
    lb, page = supervised_lb(stack, count=2)
    victim = supervised_pids(page)[0]
    with Load(stack, "sup", threads=4) as load:
        load.progress(200)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: len(serving_pids(page) - {victim}) == 2, 10, "a replacement serving")
        replaced_in = time.monotonic() - killed_at
        load.progress(200)
    print(f"kill -9: {len(load.failures)} failed, replacement serving after {replaced_in:.2f}s")
    # pool_size 1: at most the one call the victim had in flight.
    assert len(load.failures) <= 1, load.failures
    assert replaced_in < 2.0
    (slot,) = [s for s in status(page)["supervised"] if s["restarts"] == 1]
    assert "signal 9" in slot["last_exit"]
    assert "killed by signal 9 (SIGKILL)" in lb.log_tail()


def test_workers_are_recycled_after_max_requests_without_failing_a_call(stack):
    _, page = supervised_lb(stack, count=2, worker_max_requests=100)
    first = set(supervised_pids(page))
    with Load(stack, "sup", threads=4) as load:
        wait_until(lambda: not first & set(supervised_pids(page)), 60, "both workers recycled")
        load.progress(100)
    assert load.failures == []
    assert all(s["replaced"] >= 1 and s["restarts"] == 0 for s in status(page)["supervised"])
    assert not any(alive(p) for p in first)


def test_sighup_replaces_every_worker_under_load_without_failing_a_call(stack):
    lb, page = supervised_lb(stack, count=3)
    first = set(supervised_pids(page))
    with Load(stack, "sup", threads=4) as load:
        load.progress(200)
        lb.signal(signal.SIGHUP)
        wait_until(lambda: not first & set(supervised_pids(page)), 60, "every worker replaced")
        load.progress(200)
    assert load.failures == []
    assert len(set(supervised_pids(page))) == 3
    assert not any(alive(p) for p in first)


def test_sigterm_stops_the_workers_after_the_lbs_own_drain(stack):
    lb, page = supervised_lb(stack, count=2)
    pids = supervised_pids(page)
    with Load(stack, "sup", threads=2) as load:
        load.progress(50)
        lb.signal(signal.SIGTERM)
        assert lb.wait(30) == 0
    for p in pids:
        wait_until(lambda: not alive(p), 5, f"worker {p} to exit")
    assert "supervised workers stopped" in lb.log_tail()
