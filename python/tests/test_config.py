"""config.ini reader: same keys, defaults and rules as the Rust reader."""

import os

import pytest

from rpc_sdk import Address, Config, ConfigError, RegistrySpec
from rpc_sdk.config import local_ip_with_prefix


def test_reads_the_originals_keys():
    c = Config.parse(
        "# comment\n zk = 127.0.0.1:2181,127.0.0.2:2181 \nproduct=online_x\n"
        "service=echo # trailing\nfront_host=127.0.0.1\nfront_port=5555\n"
        "back_address=/tmp/lb.sock\nworker_pool_size=4\nproxy_address=127.0.0.1:5550\n"
        "rpc_timeout=2.5\nverbose=1\nzk_session_timeout=10\nfalcon_client=http://x/push\n"
        "profile=0\nstand_alone=0\nip_prefix=\nfront_sock=\n"
    )
    assert c.registry == RegistrySpec("zk", "127.0.0.1:2181,127.0.0.2:2181")
    assert c.zk == "127.0.0.1:2181,127.0.0.2:2181"
    assert c.product == "online_x"
    assert c.service == "echo"
    assert c.front_address() == Address("127.0.0.1:5555")
    assert c.back_address == Address("/tmp/lb.sock") and c.back_address.is_unix
    assert c.worker_pool_size == 4
    assert c.proxy_address == [Address("127.0.0.1:5550")]
    assert c.rpc_timeout == 2.5
    assert c.zk_session_timeout == 10
    assert c.verbose is True
    assert c.falcon_client == "http://x/push"
    assert c.ip_prefix is None and c.front_sock is None
    two = Config.parse("proxy_address = 127.0.0.1:1, /run/p.sock")
    assert two.proxy_address[1] == Address("/run/p.sock")


def test_defaults_match_the_spec():
    c = Config.parse("")
    assert c.product == "test"
    assert c.zk_session_timeout == 30
    assert c.worker_pool_size == 1
    assert c.rpc_timeout == 15
    assert c.verbose is False and c.profile is False and c.stand_alone is False
    assert c.service is None and c.back_address is None and c.proxy_address == []
    assert c.max_frame_size == 16_384_000
    assert (c.heartbeat_interval, c.heartbeat_timeout) == (1.0, 6.0)
    assert (c.quiet_period, c.stop_timeout, c.register_delay) == (5.0, 30.0, 1.0)
    assert (c.balance, c.dispatch) == ("p2c", "least_loaded")


def test_our_limits_are_read():
    c = Config.parse(
        "max_frame_size=1024\nmax_connections=7\nmax_inflight=8\nbackend_max_inflight=9\n"
        "balance=rr\ndispatch=round-robin\nheartbeat_interval_ms=200\nheartbeat_timeout_ms=1200\n"
        "drain_timeout=0.5\nquiet_period=0\nstop_timeout=3\nqueue_size=5\nregister_delay=0\n"
        "no_worker_grace=2\nmetrics_address=127.0.0.1:9100\nthreads=1\n"
    )
    assert (c.max_frame_size, c.max_connections, c.max_inflight, c.backend_max_inflight) == (
        1024, 7, 8, 9)
    assert (c.balance, c.dispatch) == ("round_robin", "round_robin")
    assert (c.heartbeat_interval, c.heartbeat_timeout) == (0.2, 1.2)
    assert (c.drain_timeout, c.quiet_period, c.stop_timeout) == (0.5, 0.0, 3.0)
    assert (c.queue_size, c.register_delay, c.no_worker_grace) == (5, 0.0, 2.0)
    assert c.metrics_address == "127.0.0.1:9100" and c.threads == 1


def test_unknown_keys_are_kept_not_fatal():
    c = Config.parse("some_future_key = 3\n")
    assert c.unknown == {"some_future_key": "3"}


@pytest.mark.parametrize(
    "text,key",
    [
        ("worker_pool_size=0", "worker_pool_size"),
        ("worker_pool_size=-1", "worker_pool_size"),
        ("rpc_timeout=soon", "rpc_timeout"),
        ("rpc_timeout=-1", "rpc_timeout"),
        ("front_port=70000", "front_port"),
        ("zk=nohostport", "zk"),
        ("zk=host:notaport", "zk"),
        ("zk=local:", "zk"),
        ("balance=random", "balance"),
        ("dispatch=random", "dispatch"),
        ("verbose=2", "verbose"),
        ("product=a/b", "product"),
        ("product=", "product"),
        ("product=online_a,online_b", "one process per product"),
        ("heartbeat_interval_ms=1000\nheartbeat_timeout_ms=1000", "heartbeat_timeout_ms"),
    ],
)
def test_invalid_values_name_the_key(text, key):
    with pytest.raises(ConfigError) as e:
        Config.parse(text)
    assert key in str(e.value)


def test_syntax_error_names_the_line():
    with pytest.raises(ConfigError, match="line 2"):
        Config.parse("product=x\njust words\n")


def test_registry_defaults_to_local(monkeypatch):
    monkeypatch.setenv("RPC_REGISTRY_DIR", "/var/reg-env")
    assert Config.parse("").registry == RegistrySpec("local", "/var/reg-env")
    assert Config.parse("zk=local").registry == RegistrySpec("local", "/var/reg-env")
    assert Config.parse("zk=local:/var/reg").registry == RegistrySpec("local", "/var/reg")
    assert Config.parse("zk=local:/var/reg").zk == "local:/var/reg"


def test_front_sock_wins_and_becomes_absolute():
    c = Config.parse("front_sock=echo.sock\nfront_host=1.2.3.4\nfront_port=1")
    a = c.front_address()
    assert a.is_unix and os.path.isabs(a.text) and a.text.endswith("echo.sock")


def test_ip_prefix_picks_loopback():
    assert local_ip_with_prefix("127.") == "127.0.0.1"
    c = Config.parse("ip_prefix=127.\nfront_port=9")
    assert c.front_address() == Address("127.0.0.1:9")
    with pytest.raises(ConfigError, match="ip_prefix"):
        Config.parse("ip_prefix=250.251.\nfront_port=9").front_address()
    with pytest.raises(ConfigError, match="front_host"):
        Config.parse("front_port=9").front_address()


def test_load_reports_the_path(tmp_path):
    p = tmp_path / "config.ini"
    p.write_text("service = echo\nback_address = 127.0.0.1:7000\n")
    c = Config.load(p)
    assert c.service == "echo" and c.back_address.host_port() == ("127.0.0.1", 7000)
    with pytest.raises(ConfigError, match="missing.ini"):
        Config.load(tmp_path / "missing.ini")
