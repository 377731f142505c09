"""A worker process behind ``rpc-lb`` (SPEC section 5).

The worker dials the LB's ``back_address`` and keeps one connection. The LB
sends calls (bare method names, its own seqids) and a heartbeat every
second; the worker echoes heartbeats and answers each call from a pool of
``pool_size`` threads running a generated ``Processor``, in any order.

Lifecycle:

* no frame from the LB for ``heartbeat_timeout`` (5 s) means the LB is lost:
  the connection is closed and redialled with backoff 1 s, 2 s, 4 s (capped);
* an exception escaping the processor becomes an ``EXCEPTION`` reply
  (``INTERNAL_ERROR``) and the worker keeps serving;
* SIGTERM/SIGINT (or :meth:`RpcWorker.stop`) sends ``STOP``; the LB stops
  assigning work and answers ``STOP_CONFIRM``; the worker exits once it has
  the confirmation and every request it received has been answered (or after
  ``stop_timeout`` without confirmation, once idle). A second signal exits
  at once.

Run one from the command line::

    python -m rpc_sdk.worker -c worker.ini --processor my_service:make_processor
"""

import argparse
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from queue import SimpleQueue
from typing import Optional, Sequence, Union

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport.TTransport import TMemoryBuffer

from . import wire
from .config import AddressLike, Config, as_address

log = logging.getLogger("rpc_sdk.worker")

# How often the serving loop looks at its flags while waiting for frames.
_POLL = 0.05


class _Connection:
    """One dialled connection to the LB. Replies come from pool threads,
    echoes and control messages from the serving loop. Frames queue up and
    whichever thread finds no writer active becomes the writer: it sends
    everything queued in one ``sendall`` (including frames queued while it
    was writing), so concurrent replies share a system call."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self._queued: list = []
        self._writing = False
        self.broken = False

    def send(self, frame: bytes) -> bool:
        with self._lock:
            if self.broken:
                return False
            self._queued.append(frame)
            if self._writing:
                return True  # the active writer sends it
            self._writing = True
        while True:
            with self._lock:
                batch = self._queued
                if not batch or self.broken:
                    self._writing = False
                    return not self.broken
                self._queued = []
            try:
                self.sock.sendall(batch[0] if len(batch) == 1 else b"".join(batch))
            except OSError as e:
                # A partial frame may be on the wire: the stream is unusable.
                log.warning("write to LB failed: %s", e)
                with self._lock:
                    self.broken = True
                    self._writing = False
                    self._queued = []
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                return False

    def close(self) -> None:
        with self._lock:
            self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()


class RpcWorker:
    """Serves a generated Thrift ``Processor`` to an LB over a reverse
    connection. ``run()`` blocks until the worker has stopped."""

    def __init__(
        self,
        processor,
        address: AddressLike,
        pool_size: int = 1,
        heartbeat_timeout: float = 5.0,
        backoff: Sequence[float] = (1.0, 2.0, 4.0),
        connect_timeout: float = 5.0,
        stop_timeout: float = 30.0,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_pending: int = 1024,
    ):
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not backoff:
            raise ValueError("backoff needs at least one delay")
        self.processor = processor
        self.address = as_address(address)
        self.pool_size = pool_size
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = tuple(backoff)
        self.connect_timeout = connect_timeout
        self.stop_timeout = stop_timeout
        self.max_frame_size = max_frame_size
        # Requests received but not answered yet (running or queued) before
        # new ones are refused; the LB should never send more than pool_size.
        self.max_pending = max(max_pending, pool_size)

        self._stop_requested = False
        self._force = False
        self._lock = threading.Lock()
        self._inflight = 0
        self.served = 0
        self.connects = 0
        self.connected = threading.Event()
        self._conn: Optional[_Connection] = None

    @classmethod
    def from_config(cls, processor, config: Union[str, os.PathLike, Config], **overrides):
        """A worker configured by ``config.ini``: ``back_address``,
        ``worker_pool_size``, ``max_frame_size``, ``stop_timeout``; the LB's
        ``heartbeat_interval_ms``/``heartbeat_timeout_ms`` set the worker's
        own timeout (timeout - interval: 5 s by default) and backoff
        (interval x 1, 2, 4). Keyword arguments override."""
        c = config if isinstance(config, Config) else Config.load(config)
        if c.back_address is None:
            raise ValueError("config has no back_address (the LB address workers dial)")
        hb = c.heartbeat_interval
        kw = dict(
            pool_size=c.worker_pool_size,
            heartbeat_timeout=c.heartbeat_timeout - hb,
            backoff=(hb, 2 * hb, 4 * hb),
            stop_timeout=c.stop_timeout,
            max_frame_size=c.max_frame_size,
        )
        kw.update(overrides)
        return cls(processor, c.back_address, **kw)

    # -- control -------------------------------------------------------------
    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def stop(self) -> None:
        """Asks for a graceful stop. Safe from signal handlers and threads."""
        self._stop_requested = True

    def kill(self) -> None:
        """Stops at once, abandoning requests in flight."""
        self._stop_requested = True
        self._force = True

    def _on_signal(self, signum, _frame) -> None:
        if self._stop_requested:
            log.warning("second signal %s: exiting now", signum)
            self._force = True
        else:
            log.info("signal %s: stopping after requests in flight", signum)
            self._stop_requested = True

    # -- main loop -------------------------------------------------------------
    def run(self, install_signals: bool = True) -> None:
        """Serves until stopped. Installs SIGTERM/SIGINT handlers when
        called from the main thread (and ``install_signals``)."""
        previous = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        # A plain queue and threads of our own: the reader hands over a
        # (connection, message) pair per request, with none of an
        # executor's per-task Future.
        pool: SimpleQueue = SimpleQueue()
        threads = [
            threading.Thread(
                target=self._pool_thread, args=(pool,), name=f"rpc-worker_{i}", daemon=True
            )
            for i in range(self.pool_size)
        ]
        for t in threads:
            t.start()
        try:
            self._loop(pool)
        finally:
            for _ in threads:
                pool.put(None)
            if not self._force:
                for t in threads:
                    t.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, pool: SimpleQueue) -> None:
        attempt = 0
        while not self._stop_requested:
            try:
                sock = wire.connect_socket(self.address, self.connect_timeout)
            except OSError as e:
                delay = self.backoff[min(attempt, len(self.backoff) - 1)]
                attempt += 1
                log.warning("cannot reach LB at %s (%s); retrying in %.1fs", self.address, e, delay)
                self._sleep(delay)
                continue
            attempt = 0
            # Reads wait in select(); the socket timeout bounds writes.
            sock.settimeout(self.heartbeat_timeout)
            conn = _Connection(sock)
            self._conn = conn
            self.connects += 1
            self.connected.set()
            log.info("connected to LB at %s (pool_size=%d)", self.address, self.pool_size)
            try:
                done = self._serve(conn, pool)
            finally:
                self.connected.clear()
                self._conn = None
                conn.close()
            if done:
                return
            if not self._stop_requested:
                # Redial after the first backoff step: the LB may be restarting.
                delay = self.backoff[0]
                log.warning("lost LB at %s; redialling in %.1fs", self.address, delay)
                self._sleep(delay)
        # Stop requested while disconnected: nobody can take replies, but
        # let running handlers finish (bounded).
        self._wait_idle(self.stop_timeout)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < end:
            time.sleep(min(_POLL, max(0.0, end - time.monotonic())))

    def _wait_idle(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.inflight and not self._force and time.monotonic() < end:
            time.sleep(_POLL)

    def _serve(self, conn: _Connection, pool: SimpleQueue) -> bool:
        """Serves one connection. True when the worker is done (graceful stop
        completed), False when the connection was lost."""
        reader = wire.FrameReader(conn.sock, self.max_frame_size)
        last_rx = time.monotonic()
        stop_sent_at: Optional[float] = None
        confirmed = False
        while True:
            if self._force:
                return True
            now = time.monotonic()
            if self._stop_requested and stop_sent_at is None:
                if not conn.send(wire.stop()):
                    self._wait_idle(self.stop_timeout)
                    return True
                stop_sent_at = now
                log.info("sent STOP; waiting for STOP_CONFIRM and %d request(s)", self.inflight)
            if stop_sent_at is not None:
                waited = now - stop_sent_at
                if (confirmed or waited > self.stop_timeout) and self.inflight == 0:
                    log.info("stopped%s", "" if confirmed else " (no STOP_CONFIRM)")
                    return True
                if waited > 2 * self.stop_timeout:
                    log.warning("stop timed out with %d request(s) in flight", self.inflight)
                    return True
            if conn.broken:
                return self._lost(stop_sent_at, "write failed")
            try:
                payload = reader.read(wait=_POLL)
            except socket.timeout:
                if now - last_rx > self.heartbeat_timeout:
                    return self._lost(stop_sent_at, f"no heartbeat for {self.heartbeat_timeout:.1f}s")
                continue
            except wire.ProtocolError as e:
                return self._lost(stop_sent_at, f"bad frame: {e}")
            except OSError as e:
                return self._lost(stop_sent_at, str(e))
            if payload is None:
                return self._lost(stop_sent_at, "LB closed the connection")
            last_rx = time.monotonic()
            # Everything already received is handled before the flags are
            # looked at again: one wake-up, many frames.
            while payload is not None:
                try:
                    msg = wire.parse_message(payload)
                except wire.ProtocolError as e:
                    return self._lost(stop_sent_at, f"bad message: {e}")
                kind = msg.kind
                if kind == wire.CALL or kind == wire.ONEWAY:
                    self._dispatch(conn, pool, msg)
                elif kind == wire.HEARTBEAT:
                    conn.send(msg.frame())
                elif kind == wire.STOP_CONFIRM:
                    confirmed = True
                    log.info("STOP_CONFIRM received")
                else:
                    log.warning("ignoring message type %d (%s) from LB", kind, msg.name)
                try:
                    payload = reader.buffered()
                except wire.ProtocolError as e:
                    return self._lost(stop_sent_at, f"bad frame: {e}")

    def _lost(self, stop_sent_at: Optional[float], why: str) -> bool:
        log.warning("connection to LB at %s lost: %s", self.address, why)
        if stop_sent_at is not None or self._stop_requested:
            # Stopping anyway: finish what runs (replies cannot be delivered).
            self._wait_idle(self.stop_timeout)
            return True
        return False

    def _dispatch(self, conn: _Connection, pool: SimpleQueue, msg: wire.Message) -> None:
        with self._lock:
            if self._inflight >= self.max_pending:
                refuse = True
            else:
                refuse = False
                self._inflight += 1
        if refuse:
            log.warning("refusing %s: %d requests pending", msg.name, self.max_pending)
            if msg.kind == wire.CALL:
                conn.send(
                    wire.application_exception(
                        msg.name, msg.seqid, wire.INTERNAL_ERROR, "worker overloaded"
                    )
                )
            return
        pool.put((conn, msg))

    def _pool_thread(self, pool: SimpleQueue) -> None:
        # Protocol objects are reused across requests; only their memory
        # transports are new each time.
        iprot = TBinaryProtocolAccelerated(TMemoryBuffer())
        oprot = TBinaryProtocolAccelerated(TMemoryBuffer())
        lock = self._lock
        while True:
            item = pool.get()
            if item is None:
                return
            conn, msg = item
            try:
                out = self._process(msg, iprot, oprot)
                if out is not None:
                    conn.send(out)
            except BaseException:  # never let a pool thread die silently
                log.exception("failed to answer %s", msg.name)
            finally:
                with lock:
                    self._inflight -= 1
                    self.served += 1

    def _process(self, msg: wire.Message, iprot, oprot) -> Optional[bytes]:
        """Runs the processor on one request; the framed reply or None."""
        iprot.trans = TMemoryBuffer(msg.payload)
        otrans = oprot.trans = TMemoryBuffer()
        try:
            self.processor.process(iprot, oprot)
        except Exception as e:
            log.exception("handler for %s raised", msg.name)
            if msg.kind == wire.ONEWAY:
                return None
            return wire.application_exception(
                msg.name, msg.seqid, wire.INTERNAL_ERROR, f"{type(e).__name__}: {e}"
            )
        data = otrans.getvalue()
        if msg.kind == wire.ONEWAY:
            return None
        if not data:
            return wire.application_exception(
                msg.name, msg.seqid, wire.INTERNAL_ERROR, f"{msg.name} produced no reply"
            )
        return len(data).to_bytes(4, "big") + data


def _load_processor(spec: str):
    """``module:attr``; ``attr`` is a processor or a callable returning one."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise SystemExit(f"--processor must be module:attribute, got {spec!r}")
    obj = getattr(importlib.import_module(module), attr)
    if hasattr(obj, "process"):
        return obj
    return obj()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rpc_sdk.worker",
        description="Serve a Thrift processor to an rpc-lb (reverse connection).",
    )
    p.add_argument("-c", "--config", required=True, help="config.ini (back_address, worker_pool_size)")
    p.add_argument("--processor", required=True, help="module:factory returning a generated Processor")
    p.add_argument("--pool-size", type=int, help="override worker_pool_size")
    p.add_argument("--back-address", help="override back_address")
    p.add_argument("-L", "--log-file", help="log to this file instead of stderr")
    p.add_argument("--log-level", default="info")
    p.add_argument("--work-dir", help="change to this directory first")
    args = p.parse_args(argv)
    if args.work_dir:
        os.chdir(args.work_dir)
    logging.basicConfig(
        filename=args.log_file,
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    config = Config.load(args.config)
    if args.back_address:
        config.set("back_address", args.back_address)
    if args.pool_size:
        config.set("worker_pool_size", str(args.pool_size))
    worker = RpcWorker.from_config(_load_processor(args.processor), config)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
