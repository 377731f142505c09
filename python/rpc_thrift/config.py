"""``config.ini`` as the original read it: ``parse_config(path)`` returns a
dict of raw strings, so ``config["back_address"]`` and
``int(config["worker_pool_size"])`` work as before. For typed values and
validation use :class:`rpc_sdk.Config`."""

import sys
import traceback

RPC_DEFAULT_CONFIG = "config.ini"

RPC_ZK = "zk"
RPC_ZK_TIMEOUT = "zk_session_timeout"

RPC_PRODUCT = "product"
RPC_SERVICE = "service"

RPC_FRONT_HOST = "front_host"
RPC_FRONT_PORT = "front_port"
RPC_IP_PREFIX = "ip_prefix"

RPC_BACK_ADDRESS = "back_address"

RPC_WORKER_POOL_SIZE = "worker_pool_size"
RPC_PROXY_ADDRESS = "proxy_address"


def parse_config(config_path):
    """``key=value`` lines into a dict of strings (later keys win).

    Follows SPEC section 7, like :class:`rpc_sdk.Config`: ``#`` starts a
    comment anywhere on a line and spaces around keys and values are trimmed.
    (The original dropped every line containing ``#`` and kept the spaces.)
    Lines without ``=`` are ignored, as in the original; nothing is
    validated here."""
    config = {}
    with open(config_path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            key, sep, value = line.partition("=")
            if sep and key.strip():
                config[key.strip()] = value.strip()
    return config


def print_exception(info_logger=None):
    """Prints the exception being handled, to ``info_logger.info`` or stdout."""
    text = "".join(traceback.format_exception(*sys.exc_info()))
    if info_logger:
        info_logger.info("-------------------------")
        info_logger.info(text)
    else:
        print("-------------------------")
        print(text)
