"""Python SDK for rpc_proxy.

* :class:`ProxyClient`, :func:`connect`, :class:`ClientPool`: call services
  through the local proxy with stock Thrift-generated clients;
* :class:`RpcWorker`: serve a generated ``Processor`` behind ``rpc-lb``;
* :class:`Config`: the ``config.ini`` reader.
"""

from .client import ClientPool, PoolTimeout, ProxyClient, ProxyTransport, connect
from .config import Address, Config, ConfigError, RegistrySpec

__all__ = [
    "Address",
    "ClientPool",
    "Config",
    "ConfigError",
    "PoolTimeout",
    "ProxyClient",
    "ProxyTransport",
    "RegistrySpec",
    "RpcWorker",
    "connect",
]
__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so that `python -m rpc_sdk.worker` runs a fresh module.
    if name == "RpcWorker":
        from .worker import RpcWorker

        return RpcWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
