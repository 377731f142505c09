#!/usr/bin/env python3
"""A local OTLP/HTTP sink for the tracing scenario: accepts every POST (the
proxy's span exports), reads it and throws it away, answering 200 with an
empty body (an empty ExportTraceServiceResponse). Keeps connections alive,
as a collector does.

    python3 bench/rpcbench/otlp_sink.py --listen 127.0.0.1:4318
"""

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        left = int(self.headers.get("Content-Length", 0))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="host:port")
    args = p.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Discard)
    server.daemon_threads = True
    print(f"OTLP sink on {args.listen}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
