#!/usr/bin/env python3
"""The benchmark service (``bench/bench.thrift``) in a stock Apache Thrift
Python server: what a shop runs without rpc_proxy. ``bench/run`` measures
it beside the LB chain with Python workers, same handler, same processes.

    PYTHONPATH=python python3 bench/stock_server.py --listen 127.0.0.1:7000

``TForkingServer`` (the default) forks one process per connection;
``--server threaded`` is ``TThreadedServer`` (one thread per connection, one
process). Framed transport, accelerated binary protocol (the C extension).
"""

import argparse
import logging
import sys

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAcceleratedFactory
from thrift.server import TServer
from thrift.transport import TSocket, TTransport

from rpc_sdk.bench_worker import make_processor


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--server", choices=["forking", "threaded"], default="forking")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    host, port = args.listen.rsplit(":", 1)
    processor = make_processor("generated")
    sock = TSocket.TServerSocket(host=host, port=int(port))
    cls = TServer.TForkingServer if args.server == "forking" else TServer.TThreadedServer
    server = cls(processor, sock, TTransport.TFramedTransportFactory(),
                 TBinaryProtocolAcceleratedFactory())
    if args.server == "threaded":
        server.daemon = True
    print(f"stock {args.server} server on {args.listen}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
