"""An Echo worker written against the original Python SDK's API
(`rpc_thrift`, as its README ran one), behind rpc-lb:
`python3 legacy_worker.py config.ini`. Answers that identify a process
carry its pid."""

import os
import sys
import time

from echo import Echo
from echo.ttypes import EchoError
from rpc_thrift.config import parse_config
from rpc_thrift.worker import RpcWorker


class EchoHandler:
    def echo(self, message):
        return str(os.getpid()) if message == "pid" else message

    def add(self, a, b):
        return a + b

    def sleep(self, ms):
        time.sleep(ms / 1000.0)
        return str(os.getpid())

    def fail(self, message):
        raise EchoError(message)

    def notify(self, message):
        pass


if __name__ == "__main__":
    config = parse_config(sys.argv[1])
    endpoint = config["back_address"]
    s = RpcWorker(Echo.Processor(EchoHandler()), endpoint,
                  pool_size=int(config["worker_pool_size"]), service=config["service"])
    s.connect(endpoint)
    s.run()
