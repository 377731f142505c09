"""Child processes of a benchmark run: start, stop, CPU time, memory, and
the small wire probes that tell when a component is ready."""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0


class ComponentError(Exception):
    """A component did not start or died."""


# --- processes ------------------------------------------------------------


class Proc:
    """A child process with its log file, CPU time and memory."""

    def __init__(self, name, argv, logdir, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.logpath = os.path.join(logdir, name + ".log")
        self.log = open(self.logpath, "wb")
        try:
            self.p = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            raise ComponentError(f"{name}: cannot start {self.argv[0]}: {e}")
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def check(self):
        if not self.alive():
            raise ComponentError(f"{self.name} exited with {self.p.returncode}; log:\n{self.tail()}")

    def tail(self, n=15):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join("    " + l for l in lines[-n:])
        except OSError:
            return ""

    def output(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def cpu_seconds(self):
        """utime + stime from /proc/<pid>/stat."""
        return pid_cpu_seconds(self.pid)

    def children(self):
        """Pids of this process's live children (a forking server's)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            return []

    def rss_kib(self):
        """VmRSS from /proc/<pid>/status."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def stop(self, timeout=10.0):
        if self.alive():
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
            except ProcessLookupError:
                pass
        self.log.close()


def pid_cpu_seconds(pid):
    """utime + stime of a process from /proc/<pid>/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


class RssSampler:
    """Largest VmRSS of some processes while a run goes on, and the CPU
    time of the children they fork during it (a forking server serves each
    connection in a child that exits with the connection; up to one
    sampling interval of a child's last CPU time is missed)."""

    def __init__(self, procs, every=0.05):
        self.procs = procs
        self.every = every
        self.peak = {p.name: 0 for p in procs}
        self._child_cpu = {p.name: {} for p in procs}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for p in self.procs:
                r = p.rss_kib()
                if r:
                    self.peak[p.name] = max(self.peak[p.name], r)
                for c in p.children():
                    cpu = pid_cpu_seconds(c)
                    if cpu is not None:
                        self._child_cpu[p.name][c] = cpu
            self._stop.wait(self.every)

    def child_cpu(self, name):
        """CPU seconds the children of `name` used during the run."""
        base = self._child_base[name]
        return sum(cpu - base.get(pid, 0.0) for pid, cpu in self._child_cpu[name].items())

    def __enter__(self):
        # Children already running count from here on.
        self._child_base = {
            p.name: {c: pid_cpu_seconds(c) or 0.0 for c in p.children()} for p in self.procs
        }
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# --- wire helpers (readiness probes) --------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(addr, timeout=2.0):
    if ":" in addr:
        host, port = addr.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr)
    return s


def echo_call(name, seqid, data):
    body = b"\x0b\x00\x01" + struct.pack(">I", len(data)) + data + b"\x00"
    n = name.encode()
    msg = struct.pack(">II", 0x80010001, len(n)) + n + struct.pack(">i", seqid) + body
    return struct.pack(">I", len(msg)) + msg


def read_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise ConnectionError("closed")
        b += chunk
    return b


def probe(addr, name):
    """One echo call; True if the right reply came back."""
    try:
        with connect(addr) as s:
            s.sendall(echo_call(name, 7, b"probe"))
            (n,) = struct.unpack(">I", read_exact(s, 4))
            msg = read_exact(s, n)
            (ver,) = struct.unpack(">I", msg[:4])
            return ver == 0x80010002 and msg.endswith(b"probe\x00")
    except (OSError, ConnectionError, struct.error):
        return False


def wait_until(what, cond, procs, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        if cond():
            return
        time.sleep(0.05)
    logs = "\n".join(f"  {p.name}:\n{p.tail()}" for p in procs)
    raise ComponentError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def can_connect(addr):
    try:
        with connect(addr, 0.5):
            return True
    except OSError:
        return False
