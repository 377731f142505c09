"""rpc_thrift (the original SDK's API) without a network: parse_config on
the original README's config.ini, the protocol's message names, the base
service's types, rpc_wrapper, the pool's bounds and the logging helpers."""

import importlib.util
import logging
import os
import sys
import threading

import pytest

if importlib.util.find_spec("rpc_thrift") is None:
    # An rpc_sdk installed before rpc_thrift existed: use the source tree's.
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from thrift.protocol.TBinaryProtocol import TBinaryProtocol, TBinaryProtocolAccelerated  # noqa: E402
from thrift.Thrift import TMessageType  # noqa: E402
from thrift.transport.TTransport import TMemoryBuffer  # noqa: E402

import rpc_thrift  # noqa: E402
from rpc_sdk import wire  # noqa: E402
from rpc_thrift import config as rconfig  # noqa: E402
from rpc_thrift.config import parse_config, print_exception  # noqa: E402
from rpc_thrift.cython.cybinary_protocol import TCyBinaryProtocol  # noqa: E402
from rpc_thrift.log_utils.log import dictConfig  # noqa: E402
from rpc_thrift.log_utils.log_handlers import CustomWatchedFileHandler, KidsLogHandler  # noqa: E402
from rpc_thrift.pool import ConnectionPool, NoConnectionsAvailable  # noqa: E402
from rpc_thrift.protocol import TUtf8BinaryProtocol  # noqa: E402
from rpc_thrift.rpc_wrapper import rpc_wrapper_for_class_method, rpc_wrapper_for_method  # noqa: E402
from rpc_thrift.services import RpcServiceBase  # noqa: E402
from rpc_thrift.services.ttypes import RpcException  # noqa: E402
from rpc_thrift.utils import get_base_protocol, get_service_protocol  # noqa: E402

# The configuration block of the original README, verbatim.
README_CONFIG = """\
## 配置文件
config.ini
zk=rd1:2181,rd2:2181,mysql2:2181

# 线上的product一律以: online开头
# 而测试的product禁止使用 online的服务
product=test
verbose=0

zk_session_timeout=30

## Load Balance
service=typo
front_host=
front_port=5555
back_address=127.0.0.1:5556

# 使用网络的IP, 如果没有指定front_host, 则使用使用当前机器的内网的Ip来注册
ip_prefix=10.

## Server
worker_pool_size=2

## Client/Proxy
proxy_address=127.0.0.1:5550
"""


def test_parse_config_reads_the_readme_config(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(README_CONFIG, encoding="utf-8")
    config = parse_config(str(path))
    assert config == {
        "zk": "rd1:2181,rd2:2181,mysql2:2181",
        "product": "test",
        "verbose": "0",
        "zk_session_timeout": "30",
        "service": "typo",
        "front_host": "",
        "front_port": "5555",
        "back_address": "127.0.0.1:5556",
        "ip_prefix": "10.",
        "worker_pool_size": "2",
        "proxy_address": "127.0.0.1:5550",
    }
    # The README's worker reads it this way.
    assert int(config[rconfig.RPC_WORKER_POOL_SIZE]) == 2
    assert config[rconfig.RPC_BACK_ADDRESS] == "127.0.0.1:5556"


def test_parse_config_trims_and_strips_comments(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(
        " service = typo   # the LB's service\n"
        "back_address = /tmp/lb.sock\n"
        "falcon_client=http://h/push?a=b\n"
        "no equals sign here\n"
        "=orphan value\n"
        "service=typo2\n",
        encoding="utf-8",
    )
    assert parse_config(str(path)) == {
        "service": "typo2",  # the last one wins
        "back_address": "/tmp/lb.sock",
        "falcon_client": "http://h/push?a=b",
    }
    with pytest.raises(OSError):
        parse_config(str(tmp_path / "missing.ini"))


def test_config_key_names_and_message_types():
    assert (rconfig.RPC_DEFAULT_CONFIG, rconfig.RPC_ZK, rconfig.RPC_ZK_TIMEOUT) == (
        "config.ini", "zk", "zk_session_timeout")
    assert (rconfig.RPC_PRODUCT, rconfig.RPC_SERVICE, rconfig.RPC_FRONT_HOST,
            rconfig.RPC_FRONT_PORT, rconfig.RPC_IP_PREFIX, rconfig.RPC_PROXY_ADDRESS) == (
        "product", "service", "front_host", "front_port", "ip_prefix", "proxy_address")
    assert (rpc_thrift.MESSAGE_TYPE_HEART_BEAT, rpc_thrift.MESSAGE_TYPE_STOP) == (20, 21)


def test_print_exception_to_a_logger_and_to_stdout(capsys, caplog):
    try:
        raise KeyError("lost key")
    except KeyError:
        with caplog.at_level(logging.INFO, logger="rpc_thrift_test"):
            print_exception(logging.getLogger("rpc_thrift_test"))
        print_exception()
    assert "KeyError: 'lost key'" in caplog.text
    assert "Traceback" in capsys.readouterr().out


def header(data: bytes):
    return wire.parse_message(data)


def test_calls_are_named_service_colon_method():
    buf = TMemoryBuffer()
    client = RpcServiceBase.Client(TUtf8BinaryProtocol(buf, service_name="typo"))
    client.send_ping()
    m = header(buf.getvalue())
    assert (m.kind, m.name) == (wire.CALL, "typo:ping")
    # ping1 is a HEARTBEAT for the proxy itself: not prefixed.
    buf = TMemoryBuffer()
    RpcServiceBase.Client(TUtf8BinaryProtocol(buf, service_name="typo")).send_ping1()
    m = header(buf.getvalue())
    assert (m.kind, m.name, m.body) == (wire.HEARTBEAT, "ping", b"\x00")
    # No service: bare names (a client talking to a server directly).
    buf = TMemoryBuffer()
    TUtf8BinaryProtocol(buf, service_name="").writeMessageBegin("m", TMessageType.ONEWAY, 7)
    m = header(buf.getvalue())
    assert (m.kind, m.name, m.seqid) == (wire.ONEWAY, "m", 7)
    # The original's Cython protocol prefixed every message type.
    buf = TMemoryBuffer()
    TCyBinaryProtocol(buf, service="typo").writeMessageBegin("ping", 20, 0)
    assert header(buf.getvalue()).name == "typo:ping"


def test_strings_go_out_as_utf8_whether_str_or_bytes():
    for value in ("héllo", "héllo".encode("utf-8")):
        buf = TMemoryBuffer()
        TUtf8BinaryProtocol(buf).writeString(value)
        assert buf.getvalue() == b"\x00\x00\x00\x06h\xc3\xa9llo"


@pytest.mark.parametrize("proto", [TBinaryProtocol, TBinaryProtocolAccelerated, TCyBinaryProtocol])
def test_rpc_exception_round_trip(proto):
    buf = TMemoryBuffer()
    RpcException(3, "héllo").write(proto(buf))
    data = buf.getvalue()
    # Both conventions of generated code: a class method and in place.
    assert RpcException.read(proto(TMemoryBuffer(data))) == RpcException(3, "héllo")
    e = RpcException()
    e.read(proto(TMemoryBuffer(data)))
    assert (e.code, e.msg) == (3, "héllo")
    if proto is TCyBinaryProtocol:
        e2 = RpcException()
        proto(TMemoryBuffer(data)).read_struct(e2)
        assert e2 == e


def test_rpc_wrapper_logs_and_turns_errors_into_rpc_exception(caplog):
    log = logging.getLogger("rpc_thrift_wrapper")

    class Handler:
        @rpc_wrapper_for_class_method(log)
        def correct(self, query, n):
            if query == "boom":
                raise ValueError("bad query")
            return query * n

    @rpc_wrapper_for_method(None, arg_format=lambda a: "<%d chars>" % len(a))
    def plain(a):
        raise RuntimeError("plain failed")

    with caplog.at_level(logging.INFO, logger="rpc_thrift_wrapper"):
        assert Handler().correct("ab", 2) == "abab"
    assert "correct(ab, 2), Elapsed:" in caplog.text
    with pytest.raises(RpcException) as e:
        Handler().correct("boom", 1)
    assert e.value.code == 0
    assert e.value.msg.startswith("correct(boom, 1), Exception: bad query, Trace: ")
    assert "ValueError" in e.value.msg
    with pytest.raises(RpcException) as e:
        plain("xyz")
    assert e.value.msg.startswith("plain(<3 chars>), Exception: plain failed")
    assert Handler.correct.__name__ == "correct"


def test_pool_bounds_and_timeout():
    with pytest.raises(TypeError):
        ConnectionPool("2", "127.0.0.1:1")
    with pytest.raises(ValueError):
        ConnectionPool(0, "127.0.0.1:1")
    # Transports connect at their first call: no proxy is needed to hold them.
    pool = ConnectionPool(2, "127.0.0.1:1", timeout=1000)
    with pool.base_protocol() as a, pool.base_protocol(timeout=1) as b:
        assert a is not b
        assert (a.timeout, str(a.address)) == (1.0, "127.0.0.1:1")
        with pytest.raises(NoConnectionsAvailable):
            with pool.base_protocol(timeout=0.1):
                pass
        got = []
        t = threading.Thread(target=lambda: got.append(pool._acquire_base_protocol(5)))
        t.start()
    t.join(5)
    assert got and got[0] in (a, b)


def test_service_protocol_needs_a_transport(monkeypatch):
    import rpc_thrift.utils as utils

    monkeypatch.setattr(utils, "_transport", None)
    with pytest.raises(ValueError, match="get_base_protocol"):
        get_service_protocol("typo")
    t = get_base_protocol("/tmp/no-such.sock", timeout=None)
    assert t is get_base_protocol("/tmp/no-such.sock", timeout=None)
    assert t.timeout is None and t.address.is_unix
    assert get_service_protocol("typo").trans is t
    other = get_base_protocol("127.0.0.1:1", timeout=250)
    assert other is not t and other.timeout == 0.25
    assert get_service_protocol("typo").trans is other


def test_logging_settings_naming_the_handlers(tmp_path):
    path = tmp_path / "info.log"
    dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(name)s %(message)s"}},
        "handlers": {"info": {
            "class": "rpc_thrift.log_utils.log_handlers.CustomWatchedFileHandler",
            "filename": str(path), "formatter": "plain", "level": "INFO"}},
        "loggers": {"rpc_thrift_info": {"handlers": ["info"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("rpc_thrift_info")
    (handler,) = log.handlers
    assert isinstance(handler, CustomWatchedFileHandler)
    try:
        log.info("first")
        os.rename(path, tmp_path / "info.log.1")  # what logrotate does
        log.info("second")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (tmp_path / "info.log.1").read_text() == "rpc_thrift_info first\n"
    assert path.read_text() == "rpc_thrift_info second\n"


def test_kids_handler_publishes_through_the_projects_client():
    published = []

    class Channel:
        def publish(self, channel, message):
            published.append((channel, message))

    class ProjectHandler(KidsLogHandler):
        def get_kids(self):
            return Channel()

    record = logging.makeLogRecord({"name": "info_logger", "msg": "héllo", "levelno": logging.INFO})
    ProjectHandler(redis="redis_kids", topic="medweb").emit(record)
    assert published == [("medweb.info_logger", "héllo".encode("utf-8"))]
