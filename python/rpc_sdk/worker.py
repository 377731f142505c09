"""A worker process behind ``rpc-lb`` (SPEC section 5).

The worker dials the LB's ``back_address`` and keeps one connection. The LB
sends calls (bare method names, its own seqids) and a heartbeat every
second; the worker echoes heartbeats and answers each call, up to
``pool_size`` at once, in any order.

How a connection is served (the hot path has no queue hand-off, no polling
and no second parse of a header):

* ``pool_size`` threads take turns reading the socket (leader/follower).
  The reader runs the calls it read itself, one after another, on its own
  thread, and writes their replies in one ``sendall`` before it reads
  again. With ``pool_size = 1`` every call is served by the thread that
  read it.
* The thread that called :meth:`RpcWorker.run` watches the connection. When
  the reader has been inside one call for ``handoff_after`` (checked at that
  period while ``pool_size > 1``, every 50 ms otherwise), it hands reading
  to an idle thread, or reads itself when all are busy, so heartbeats are
  echoed and queued calls start during long calls.
* The processor gets the header the worker already parsed and decodes the
  body with Thrift's C extension straight from the received frame.

Lifecycle:

* no frame from the LB for ``heartbeat_timeout`` (5 s) means the LB is lost:
  the connection is closed and redialled with backoff 1 s, 2 s, 4 s (capped;
  a lost connection is redialled at once, at most once per first step, so
  workers reach an upgraded LB's successor without a pause);
* an exception escaping the processor becomes an ``EXCEPTION`` reply
  (``INTERNAL_ERROR``) and the worker keeps serving;
* SIGTERM/SIGINT (or :meth:`RpcWorker.stop`) sends ``STOP``; the LB stops
  assigning work and answers ``STOP_CONFIRM``; the worker exits once it has
  the confirmation and every request it received has been answered (or after
  ``stop_timeout`` without confirmation, once idle). A second signal exits
  at once.

Under a supervising ``rpc-lb`` (``worker_command``), the LB's address and
pool size come from ``RPC_BACK_ADDRESS`` and ``RPC_WORKER_POOL_SIZE``. Run
one from the command line::

    python -m rpc_sdk.worker -c worker.ini --processor my_service:make_processor
"""

import argparse
import collections
import contextlib
import importlib
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Optional, Sequence, Union

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.transport.TTransport import TMemoryBuffer

from . import wire
from .config import AddressLike, Config, as_address

log = logging.getLogger("rpc_sdk.worker")

#: Environment a supervising ``rpc-lb`` gives its workers.
ENV_BACK_ADDRESS = "RPC_BACK_ADDRESS"
ENV_POOL_SIZE = "RPC_WORKER_POOL_SIZE"

# How often sleeps and a monitor without long calls to watch look at flags.
_POLL = 0.05
_RECV = 65536
_MAX_RECV = 1 << 20

_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_BEGIN = struct.Struct(">Ii")
_VERSION_1 = 0x80010000
_VERSION_MASK = 0xFFFF0000


class _Input(TBinaryProtocolAccelerated):
    """The request protocol: ``readMessageBegin`` answers the header the
    worker parsed, and the transport starts at the body."""

    header = ("", 0, 0)

    def readMessageBegin(self):
        return self.header


class _ReplyBuffer:
    """Collects a reply's bytes behind a slot for its frame length."""

    __slots__ = ("parts", "size")

    def __init__(self):
        self.parts = [b""]
        self.size = 0

    def write(self, data):
        self.parts.append(data)
        self.size += len(data)

    def flush(self):
        pass

    def frame(self) -> bytes:
        self.parts[0] = _U32.pack(self.size)
        return b"".join(self.parts)


class _Output(TBinaryProtocolAccelerated):
    """The reply protocol: the strict header in one write."""

    def writeMessageBegin(self, name, ttype, seqid):
        nb = name.encode("utf-8") if isinstance(name, str) else name
        self.trans.write(_BEGIN.pack(_VERSION_1 | ttype, len(nb)) + nb + _I32.pack(seqid))


# The reader role held by the monitor rather than a serving thread.
_MONITOR = object()


class _Session:
    """One dialled connection to the LB and the threads serving it.

    State shared by the threads lives under the worker's lock: who reads
    (``reader``), calls read but not started (``backlog``), frames waiting
    to be written (``out``). Only the reader touches ``rest`` (the bytes of
    an incomplete frame); writes are serialised by ``wlock``."""

    def __init__(self, worker: "RpcWorker", sock: socket.socket):
        self.w = worker
        self.sock = sock
        self.mu = worker._lock
        self.cond = threading.Condition(self.mu)
        self.wlock = threading.Lock()
        self.reader = None  # a serving thread's token, _MONITOR, or None
        self.inline = 0  # number of the call the reader runs, 0 when none
        self.started = 0
        self.backlog: collections.deque = collections.deque()
        self.running = 0
        self.idle = 0
        self.out: list = []
        self.closing: Optional[str] = None
        self.confirmed = False
        self.last_rx = time.monotonic()
        self.rest = bytearray()
        self.need = 4
        self.users = worker.pool_size + 1  # the socket closes when all are done
        self.stop_sent_at: Optional[float] = None

    # -- serving threads -----------------------------------------------------
    def serve_thread(self) -> None:
        me = object()
        inp = _Input(None)
        out = _Output(None)
        w = self.w
        try:
            payload = self._next(me, False, None)
            while payload is not None:
                frame = w._answer(payload, inp, out)
                payload = self._next(me, True, frame)
        except BaseException:  # never let a serving thread die silently
            log.exception("serving thread failed")
            self.close("serving thread failed")
        finally:
            self._leave()

    def _next(self, me, finished: bool, frame: Optional[bytes]) -> Optional[bytes]:
        """Settles the call this thread just ran (`finished`; its reply
        `frame`, None for a oneway) and returns its next call: from the
        backlog, or read from the socket when this thread holds (or takes)
        the reader role; waits otherwise. None once the session is closing.
        One lock acquisition per call covers both."""
        mu = self.mu
        mu.acquire()
        try:
            if finished:
                w = self.w
                self.running -= 1
                w._inflight -= 1
                w.served += 1
                if self.reader is me:
                    self.inline = 0
                if frame is not None:
                    self.out.append(frame)
            while True:
                if self.closing is not None:
                    return None
                if self.reader is None:
                    self.reader = me
                if self.backlog and self.running < self.w.pool_size:
                    self.running += 1
                    if self.reader is me:
                        self.started += 1
                        self.inline = self.started
                    return self.backlog.popleft()
                if self.out:
                    frames, self.out = self.out, []
                    mu.release()
                    try:
                        self.write(frames)
                    finally:
                        mu.acquire()
                    continue
                if self.reader is not me:
                    self.idle += 1
                    self.cond.wait()
                    self.idle -= 1
                    continue
                mu.release()
                try:
                    self.read()
                finally:
                    mu.acquire()
        finally:
            mu.release()

    # -- socket ----------------------------------------------------------------
    def read(self) -> None:
        """One receive by the reader: echoes heartbeats at once, queues calls."""
        want = _RECV if self.need - len(self.rest) <= _RECV else min(self.need - len(self.rest), _MAX_RECV)
        try:
            data = self.sock.recv(want)
        except OSError as e:
            self.close(str(e))
            return
        if not data:
            self.close("connection closed inside a frame" if self.rest else "LB closed the connection")
            return
        self.last_rx = time.monotonic()
        try:
            calls, echoes = self._parse(data)
        except wire.ProtocolError as e:
            self.close(f"bad frame: {e}")
            return
        if echoes:
            self.write(echoes)
        if calls:
            self._accept(calls)

    def _parse(self, data: bytes):
        """Splits received bytes into calls (payloads) and heartbeat echoes
        (whole frames); control messages are handled here."""
        if self.rest:
            self.rest += data
            if len(self.rest) < self.need:
                return (), ()
            buf = bytes(self.rest)
            self.rest = bytearray()
        else:
            buf = data
        n = len(buf)
        off = 0
        calls = []
        echoes = []
        limit = self.w.max_frame_size
        while n - off >= 4:
            (size,) = _I32.unpack_from(buf, off)
            if size < 0 or size > limit:
                raise wire.ProtocolError(f"frame length {size} outside 0..={limit}")
            end = off + 4 + size
            if end > n:
                break
            if size < 12:
                raise wire.ProtocolError(f"message of {size} bytes is too short")
            (word,) = _U32.unpack_from(buf, off + 4)
            if word & _VERSION_MASK != _VERSION_1:
                raise wire.ProtocolError("not a strict binary message header (old or unknown protocol)")
            kind = word & 0xFF
            if kind == wire.CALL or kind == wire.ONEWAY:
                (nlen,) = _I32.unpack_from(buf, off + 8)
                if nlen < 0 or 12 + nlen > size:
                    raise wire.ProtocolError(f"bad message name length {nlen}")
                calls.append(buf[off + 4 : end])
            elif kind == wire.HEARTBEAT:
                echoes.append(buf[off:end])
            elif kind == wire.STOP_CONFIRM:
                self.confirmed = True
                log.info("STOP_CONFIRM received")
            else:
                log.warning("ignoring message type %d from LB", kind)
            off = end
        if off < n:
            self.rest = bytearray(buf[off:])
            self.need = 4 if n - off < 4 else 4 + _I32.unpack_from(buf, off)[0]
        return calls, echoes

    def _accept(self, calls: list) -> None:
        w = self.w
        refused = None
        with self.mu:
            room = w.max_pending - w._inflight
            if len(calls) > room:
                refused = calls[max(room, 0) :]
                calls = calls[: max(room, 0)]
            w._inflight += len(calls)
            self.backlog.extend(calls)
            if self.reader is _MONITOR and self.idle and self.backlog:
                self.cond.notify(min(self.idle, len(self.backlog)))
        if refused:
            log.warning("refusing %d call(s): %d requests pending", len(refused), w.max_pending)
            self.write([_overloaded(p) for p in refused if p[3] == wire.CALL])

    def write(self, frames: list) -> None:
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            with self.wlock:
                self.sock.sendall(data)
        except OSError as e:
            # A partial frame may be on the wire: the stream is unusable.
            self.close(f"write failed: {e}")

    def close(self, why: str) -> None:
        with self.mu:
            if self.closing is not None:
                return
            self.closing = why
            self.cond.notify_all()
        # Wakes a reader blocked in recv and a writer blocked in sendall.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _leave(self) -> None:
        with self.mu:
            self.users -= 1
            last = self.users == 0
        if last:
            with contextlib.suppress(OSError):
                self.sock.close()

    # -- the monitor (the thread that called run) -------------------------------
    def monitor(self) -> bool:
        """Watches the connection until it ends. True when the worker is
        done (stopped), False when the connection was lost."""
        w = self.w
        threads = [
            threading.Thread(target=self.serve_thread, name=f"rpc-worker_{i}", daemon=True)
            for i in range(w.pool_size)
        ]
        for t in threads:
            t.start()
        tick = w.handoff_after if w.pool_size > 1 else max(w.handoff_after, _POLL)
        seen = 0
        try:
            while True:
                done = self._duties()
                if done is not None:
                    return done
                with self.mu:
                    # The reader still inside the call it ran at the last look.
                    stuck = self.inline != 0 and self.inline == seen
                    seen = self.inline
                    if stuck:
                        self._hand_over()
                    reading = self.reader is _MONITOR
                if stuck:
                    self._flush()
                if reading:
                    done = self._read_for_busy_threads(tick)
                    if done is not None:
                        return done
                else:
                    time.sleep(tick)
        finally:
            self._leave()

    def _hand_over(self) -> None:
        """Takes the reader role from a thread inside a long call (lock held)."""
        self.reader = None
        self.inline = 0
        if self.idle:
            self.cond.notify(min(self.idle, len(self.backlog) + 1))
        else:
            self.reader = _MONITOR

    def _flush(self) -> None:
        with self.mu:
            frames, self.out = self.out, []
        self.write(frames)

    def _read_for_busy_threads(self, tick: float) -> Optional[bool]:
        """Reads while every serving thread is busy (heartbeats are echoed,
        calls queued), until one is idle to take the role back."""
        while True:
            done = self._duties()
            if done is not None:
                return done
            try:
                readable, _, _ = select.select([self.sock], [], [], tick)
            except (OSError, ValueError) as e:
                self.close(str(e))
                continue
            if readable:
                self.read()
            self._flush()
            with self.mu:
                if self.idle and self.closing is None:
                    self.reader = None
                    self.cond.notify()
                    return None

    def _duties(self) -> Optional[bool]:
        """Heartbeat timeout, graceful stop, kill. None while serving on."""
        w = self.w
        if w._force:
            self.close("killed")
            return True
        if self.closing is not None:
            log.warning("connection to LB at %s lost: %s", w.address, self.closing)
            if self.stop_sent_at is not None or w._stop_requested:
                # Stopping anyway: finish what runs (replies cannot be delivered).
                w._wait_idle(w.stop_timeout)
                return True
            return False
        now = time.monotonic()
        if now - self.last_rx > w.heartbeat_timeout:
            self.close(f"no heartbeat for {w.heartbeat_timeout:.1f}s")
            return self._duties()
        if w._stop_requested and self.stop_sent_at is None:
            self.stop_sent_at = now
            self.write([wire.stop()])
            log.info("sent STOP; waiting for STOP_CONFIRM and %d request(s)", w.inflight)
            return self._duties() if self.closing is not None else None
        if self.stop_sent_at is not None:
            waited = now - self.stop_sent_at
            if (self.confirmed or waited > w.stop_timeout) and w.inflight == 0:
                log.info("stopped%s", "" if self.confirmed else " (no STOP_CONFIRM)")
                self._end()
                return True
            if waited > 2 * w.stop_timeout:
                log.warning("stop timed out with %d request(s) in flight", w.inflight)
                self._end()
                return True
        return None

    def _end(self) -> None:
        """Closes without logging a loss."""
        with self.mu:
            if self.closing is None:
                self.closing = "stopped"
            self.cond.notify_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


def _overloaded(payload: bytes) -> bytes:
    (nlen,) = _I32.unpack_from(payload, 4)
    name = payload[8 : 8 + nlen].decode("utf-8", "replace")
    (seqid,) = _I32.unpack_from(payload, 8 + nlen)
    return wire.application_exception(name, seqid, wire.INTERNAL_ERROR, "worker overloaded")


class RpcWorker:
    """Serves a generated Thrift ``Processor`` to an LB over a reverse
    connection. ``run()`` blocks until the worker has stopped.

    ``address`` and ``pool_size`` default to ``RPC_BACK_ADDRESS`` and
    ``RPC_WORKER_POOL_SIZE`` (set by a supervising ``rpc-lb``), then to
    pool size 1."""

    def __init__(
        self,
        processor,
        address: Optional[AddressLike] = None,
        pool_size: Optional[int] = None,
        heartbeat_timeout: float = 5.0,
        backoff: Sequence[float] = (1.0, 2.0, 4.0),
        connect_timeout: float = 5.0,
        stop_timeout: float = 30.0,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_pending: int = 1024,
        handoff_after: float = 0.005,
    ):
        if address is None:
            address = os.environ.get(ENV_BACK_ADDRESS)
            if not address:
                raise ValueError(f"no LB address given and {ENV_BACK_ADDRESS} is not set")
        if pool_size is None:
            pool_size = int(os.environ.get(ENV_POOL_SIZE) or 1)
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not backoff:
            raise ValueError("backoff needs at least one delay")
        if handoff_after <= 0:
            raise ValueError("handoff_after must be positive")
        self.processor = processor
        self.address = as_address(address)
        self.pool_size = pool_size
        self.heartbeat_timeout = heartbeat_timeout
        self.backoff = tuple(backoff)
        self.connect_timeout = connect_timeout
        self.stop_timeout = stop_timeout
        self.max_frame_size = max_frame_size
        # Requests received but not answered yet (running or queued) before
        # new ones are refused; the LB sends at most pool_size plus its
        # worker_prefetch (at most 64).
        self.max_pending = max(max_pending, pool_size)
        self.handoff_after = handoff_after

        self._stop_requested = False
        self._force = False
        self._lock = threading.Lock()
        self._inflight = 0
        self.served = 0
        self.connects = 0
        self.connected = threading.Event()

    @classmethod
    def from_config(cls, processor, config: Union[str, os.PathLike, Config], **overrides):
        """A worker configured by ``config.ini``: ``back_address``,
        ``worker_pool_size``, ``max_frame_size``, ``stop_timeout``; the LB's
        ``heartbeat_interval_ms``/``heartbeat_timeout_ms`` set the worker's
        own timeout (timeout - interval: 5 s by default) and backoff
        (interval x 1, 2, 4). ``RPC_BACK_ADDRESS`` and
        ``RPC_WORKER_POOL_SIZE`` (a supervising LB's) take precedence over
        the file; keyword arguments over both."""
        c = config if isinstance(config, Config) else Config.load(config)
        address = overrides.pop("address", None) or os.environ.get(ENV_BACK_ADDRESS) or c.back_address
        if address is None:
            raise ValueError("config has no back_address (the LB address workers dial)")
        hb = c.heartbeat_interval
        kw = dict(
            pool_size=int(os.environ.get(ENV_POOL_SIZE) or c.worker_pool_size),
            heartbeat_timeout=c.heartbeat_timeout - hb,
            backoff=(hb, 2 * hb, 4 * hb),
            stop_timeout=c.stop_timeout,
            max_frame_size=c.max_frame_size,
        )
        kw.update(overrides)
        return cls(processor, address, **kw)

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
        try:
            self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> None:
        attempt = 0
        last_redial = None
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
            # Blocking: reads wait in recv, the monitor bounds everything.
            sock.settimeout(None)
            self.connects += 1
            self.connected.set()
            log.info("connected to LB at %s (pool_size=%d)", self.address, self.pool_size)
            try:
                done = _Session(self, sock).monitor()
            finally:
                self.connected.clear()
            if done:
                return
            if not self._stop_requested:
                # A lost connection is redialled at once: an upgraded LB's
                # successor is already listening (a failed dial then backs
                # off). At most once per first backoff step, so an LB that
                # accepts and closes is not spun on.
                delay = self.backoff[0]
                now = time.monotonic()
                if last_redial is None or now - last_redial >= delay:
                    last_redial = now
                    log.warning("lost LB at %s; redialling", self.address)
                    continue
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

    def _answer(self, payload: bytes, inp: _Input, out: _Output) -> Optional[bytes]:
        """Runs the processor on one request; the framed reply or None."""
        kind = payload[3]
        (nlen,) = _I32.unpack_from(payload, 4)
        name = payload[8 : 8 + nlen].decode("utf-8", "replace")
        (seqid,) = _I32.unpack_from(payload, 8 + nlen)
        inp.header = (name, kind, seqid)
        inp.trans = TMemoryBuffer(payload, 12 + nlen)
        reply = out.trans = _ReplyBuffer()
        try:
            self.processor.process(inp, out)
        except Exception as e:
            log.exception("handler for %s raised", name)
            if kind == wire.ONEWAY:
                return None
            return wire.application_exception(
                name, seqid, wire.INTERNAL_ERROR, f"{type(e).__name__}: {e}"
            )
        if kind == wire.ONEWAY:
            return None
        if not reply.size:
            return wire.application_exception(
                name, seqid, wire.INTERNAL_ERROR, f"{name} produced no reply"
            )
        return reply.frame()


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
    p.add_argument("-c", "--config",
                   help="config.ini (back_address, worker_pool_size); without it, "
                        f"{ENV_BACK_ADDRESS} and {ENV_POOL_SIZE} (set by a supervising rpc-lb)")
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
    processor = _load_processor(args.processor)
    if args.config:
        worker = RpcWorker.from_config(processor, args.config, **_overrides(args))
    else:
        worker = RpcWorker(processor, **_overrides(args))
    worker.run()
    return 0


def _overrides(args) -> dict:
    kw = {}
    if args.back_address:
        kw["address"] = args.back_address
    if args.pool_size:
        kw["pool_size"] = args.pool_size
    return kw


if __name__ == "__main__":
    sys.exit(main())
