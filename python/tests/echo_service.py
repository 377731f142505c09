"""The example Echo service (examples/thrift/echo.thrift) in Python, used by
the tests both in-process and as `python -m rpc_sdk.worker --processor
echo_service:make_processor`. Needs the generated `echo` package on the path."""

import os
import threading
import time

from echo import Echo
from echo.ttypes import EchoError


class Tracker:
    """Counts concurrent and finished handler calls (in-process tests)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.calls = 0
        self.notes = []

    def enter(self):
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def leave(self):
        with self.lock:
            self.running -= 1
            self.calls += 1


class EchoHandler:
    def __init__(self, tracker=None):
        self.tracker = tracker or Tracker()

    def echo(self, message):
        # `raise:<text>` makes the handler fail with an undeclared exception.
        if message.startswith("raise:"):
            raise RuntimeError(message[len("raise:"):])
        if message == "pid":
            return str(os.getpid())
        return message

    def add(self, a, b):
        return a + b

    def sleep(self, ms):
        self.tracker.enter()
        try:
            time.sleep(ms / 1000.0)
        finally:
            self.tracker.leave()
        return str(os.getpid())

    def fail(self, message):
        raise EchoError(message)

    def notify(self, message):
        with self.tracker.lock:
            self.tracker.notes.append(message)
        path = os.environ.get("ECHO_NOTIFY_FILE")
        if path:
            with open(path, "a") as f:
                f.write(message + "\n")


def make_processor(tracker=None):
    return Echo.Processor(EchoHandler(tracker))
