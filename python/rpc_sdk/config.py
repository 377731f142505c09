"""Reader for ``config.ini`` (SPEC section 7).

Same keys, defaults and parsing rules as the Rust reader (``rpc-config``):
``key=value`` lines, ``#`` starts a comment anywhere on a line, spaces around
keys and values are trimmed, unknown keys are kept (and logged) rather than
rejected, and an invalid value raises :class:`ConfigError` naming the key.
"""

import array
import fcntl
import logging
import math
import os
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key or line."""


@dataclass(frozen=True)
class Address:
    """An address in configuration: containing ``:`` means TCP
    (``host:port``), anything else is a Unix socket path (SPEC section 1)."""

    text: str

    @staticmethod
    def parse(text: str) -> "Address":
        text = text.strip()
        if not text:
            raise ValueError("empty address")
        return Address(text)

    @property
    def is_unix(self) -> bool:
        return ":" not in self.text

    def host_port(self) -> Tuple[str, int]:
        """``(host, port)`` of a TCP address; ``[v6]:port`` is accepted."""
        if self.is_unix:
            raise ValueError(f"{self.text!r} is a Unix socket path, not host:port")
        host, _, port = self.text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return host, int(port)
        except ValueError:
            raise ValueError(f"bad port in address {self.text!r}") from None

    def __str__(self) -> str:
        return self.text


AddressLike = Union[str, Address]


def as_address(a: AddressLike) -> Address:
    return a if isinstance(a, Address) else Address.parse(a)


@dataclass(frozen=True)
class RegistrySpec:
    """Where endpoints are registered: ``kind`` is ``"zk"`` (``target`` holds
    the hosts) or ``"local"`` (``target`` holds the directory)."""

    kind: str
    target: str

    @staticmethod
    def default_local() -> "RegistrySpec":
        d = os.environ.get("RPC_REGISTRY_DIR") or os.path.join(
            tempfile.gettempdir(), "rpc_proxy-registry"
        )
        return RegistrySpec("local", d)

    @staticmethod
    def parse(s: str) -> "RegistrySpec":
        s = s.strip()
        if s in ("", "local"):
            return RegistrySpec.default_local()
        if s.startswith("local:"):
            d = s[len("local:"):]
            if not d:
                raise ValueError("local: needs a directory")
            return RegistrySpec("local", d)
        for host in s.split(","):
            h, sep, p = host.rpartition(":")
            if not sep:
                raise ValueError("expected host:port[,host:port]")
            if not h or not _is_u16(p):
                raise ValueError(f"bad ZooKeeper address {host!r}")
        return RegistrySpec("zk", s)


def _is_u16(s: str) -> bool:
    return s.isdigit() and s.isascii() and int(s) <= 65535


@dataclass
class Config:
    """Everything ``config.ini`` can say. Durations are in seconds (float).

    The first block holds the original's keys (SPEC section 7); the second
    holds the project's limits and tunables, each with a usable default.
    """

    registry: RegistrySpec = field(default_factory=RegistrySpec.default_local)
    product: str = "test"
    zk_session_timeout: float = 30.0
    verbose: bool = False
    service: Optional[str] = None
    front_host: Optional[str] = None
    front_port: Optional[int] = None
    front_sock: Optional[str] = None
    ip_prefix: Optional[str] = None
    back_address: Optional[Address] = None
    worker_pool_size: int = 1
    proxy_address: List[Address] = field(default_factory=list)
    rpc_timeout: float = 15.0
    falcon_client: Optional[str] = None
    profile: bool = False
    stand_alone: bool = False

    max_frame_size: int = 16_384_000
    max_connections: int = 20_000
    max_inflight: int = 1024
    backend_max_inflight: int = 4096
    balance: str = "p2c"
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 6.0
    drain_timeout: float = 5.0
    frame_timeout: float = 30.0
    quiet_period: float = 5.0
    stop_timeout: float = 30.0
    dispatch: str = "least_loaded"
    queue_size: int = 10_000
    register_delay: float = 1.0
    no_worker_grace: float = 10.0
    metrics_address: Optional[str] = None
    threads: int = 0

    unknown: Dict[str, str] = field(default_factory=dict)

    @property
    def zk(self) -> str:
        """The ZooKeeper hosts, or ``local:<dir>`` for the embedded registry."""
        if self.registry.kind == "zk":
            return self.registry.target
        return "local:" + self.registry.target

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Config":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {os.fspath(path)}: {e}") from e
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> "Config":
        """Parses ``key=value`` lines; ``#`` starts a comment; spaces are trimmed."""
        c = cls()
        for i, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            k, sep, v = line.partition("=")
            if not sep:
                raise ConfigError(f"line {i}: expected key=value, got {raw!r}")
            c.set(k.strip(), v.strip())
        if c.heartbeat_timeout <= c.heartbeat_interval:
            raise _invalid(
                "heartbeat_timeout_ms",
                str(round(c.heartbeat_timeout * 1000)),
                "must exceed heartbeat_interval_ms",
            )
        return c

    def set(self, k: str, v: str) -> None:
        """Sets one key as if read from the file."""
        setter = _SETTERS.get(k)
        if setter is None:
            log.warning("unknown configuration key ignored: %s", k)
            self.unknown[k] = v
            return
        attr, conv = setter
        setattr(self, attr, conv(k, v))

    def front_address(self) -> Address:
        """The address a service or LB listens on: ``front_sock`` (made
        absolute), else ``front_host:front_port``, else this machine's first
        IPv4 address starting with ``ip_prefix``, with ``front_port``."""
        if self.front_sock is not None:
            return Address(os.path.abspath(self.front_sock))
        if self.front_port is None:
            raise ConfigError("missing `front_port`")
        if self.front_host is not None:
            host = self.front_host
        elif self.ip_prefix is not None:
            ip = local_ip_with_prefix(self.ip_prefix)
            if ip is None:
                raise _invalid(
                    "ip_prefix", self.ip_prefix, "no local IPv4 address starts with it"
                )
            host = ip
        else:
            raise ConfigError("missing `front_host`")
        return Address(f"{host}:{self.front_port}")


def _invalid(key: str, value: str, reason: str) -> ConfigError:
    return ConfigError(f"invalid value for `{key}`: {value!r} ({reason})")


def _opt(_k: str, v: str) -> Optional[str]:
    return v or None


def _flag(k: str, v: str) -> bool:
    if v in ("0", "false", "no", "off", ""):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise _invalid(k, v, "expected 0 or 1")


def _uint(k: str, v: str) -> int:
    if not (v.isascii() and v.isdigit()):
        raise _invalid(k, v, "invalid digit found in string")
    return int(v)


def _positive(k: str, v: str) -> int:
    n = _uint(k, v)
    if n == 0:
        raise _invalid(k, v, "must be at least 1")
    return n


def _seconds(k: str, v: str) -> float:
    try:
        s = float(v)
    except ValueError:
        raise _invalid(k, v, "invalid float literal") from None
    if math.isnan(s) or not 0.0 <= s <= 1e9:
        raise _invalid(k, v, "expected seconds >= 0")
    return s


def _millis(k: str, v: str) -> float:
    return _uint(k, v) / 1000.0


def _product(k: str, v: str) -> str:
    if not v or "/" in v:
        raise _invalid(k, v, "must be a non-empty name without '/'")
    if "," in v:
        # The original Java SDK registered in each product of a list; a
        # node named "a,b" would be read by no proxy.
        raise _invalid(
            k,
            v,
            "names one product (a list, which the original Java SDK registered in each, "
            "is not supported: run one process per product)",
        )
    return v


def _port(k: str, v: str) -> Optional[int]:
    if not v:
        return None
    if not _is_u16(v):
        raise _invalid(k, v, "number too large to fit in target type")
    return int(v)


def _registry(k: str, v: str) -> RegistrySpec:
    try:
        return RegistrySpec.parse(v)
    except ValueError as e:
        raise _invalid(k, v, str(e)) from None


def _address(k: str, v: str) -> Optional[Address]:
    return Address(v) if v else None


def _addresses(k: str, v: str) -> List[Address]:
    return [Address(a.strip()) for a in v.split(",") if a.strip()]


def _choice(*names: Tuple[str, Tuple[str, ...]]):
    def conv(k: str, v: str) -> str:
        for canonical, aliases in names:
            if v in aliases:
                return canonical
        expected = " or ".join(aliases[0] for _, aliases in names)
        raise _invalid(k, v, f"expected {expected}")

    return conv


_balance = _choice(
    ("p2c", ("p2c", "least_outstanding", "least-outstanding")),
    ("round_robin", ("round_robin", "round-robin", "rr")),
)
_dispatch = _choice(
    ("least_loaded", ("least_loaded", "least-loaded")),
    ("round_robin", ("round_robin", "round-robin", "rr")),
)

_SETTERS = {
    "zk": ("registry", _registry),
    "product": ("product", _product),
    "zk_session_timeout": ("zk_session_timeout", _seconds),
    "verbose": ("verbose", _flag),
    "service": ("service", _opt),
    "front_host": ("front_host", _opt),
    "front_port": ("front_port", _port),
    "front_sock": ("front_sock", _opt),
    "ip_prefix": ("ip_prefix", _opt),
    "back_address": ("back_address", _address),
    "worker_pool_size": ("worker_pool_size", _positive),
    "proxy_address": ("proxy_address", _addresses),
    "rpc_timeout": ("rpc_timeout", _seconds),
    "falcon_client": ("falcon_client", _opt),
    "profile": ("profile", _flag),
    "stand_alone": ("stand_alone", _flag),
    "max_frame_size": ("max_frame_size", _positive),
    "max_connections": ("max_connections", _positive),
    "max_inflight": ("max_inflight", _positive),
    "backend_max_inflight": ("backend_max_inflight", _positive),
    "balance": ("balance", _balance),
    "heartbeat_interval_ms": ("heartbeat_interval", _millis),
    "heartbeat_timeout_ms": ("heartbeat_timeout", _millis),
    "drain_timeout": ("drain_timeout", _seconds),
    "frame_timeout": ("frame_timeout", _seconds),
    "quiet_period": ("quiet_period", _seconds),
    "stop_timeout": ("stop_timeout", _seconds),
    "dispatch": ("dispatch", _dispatch),
    "queue_size": ("queue_size", _positive),
    "register_delay": ("register_delay", _seconds),
    "no_worker_grace": ("no_worker_grace", _seconds),
    "metrics_address": ("metrics_address", _opt),
    "threads": ("threads", _uint),
}


def local_ip_with_prefix(prefix: str) -> Optional[str]:
    """This machine's first IPv4 address whose text starts with ``prefix``."""
    for ip in _local_ipv4_addresses():
        if ip.startswith(prefix):
            return ip
    return None


def _local_ipv4_addresses() -> List[str]:
    # SIOCGIFCONF lists every configured IPv4 interface address (Linux).
    SIOCGIFCONF = 0x8912
    entry = 40  # sizeof(struct ifreq) on 64-bit Linux
    buf = array.array("B", b"\0" * entry * 128)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        addr, _ = buf.buffer_info()
        req = struct.pack("iL", len(buf), addr)
        try:
            out = fcntl.ioctl(s.fileno(), SIOCGIFCONF, req)
        except OSError:
            return []
        size = struct.unpack("iL", out)[0]
    data = buf.tobytes()[:size]
    return [
        socket.inet_ntoa(data[i + 20 : i + 24]) for i in range(0, size, entry)
    ]
