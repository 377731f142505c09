"""Fault scenarios under continuous load, one table (`scripts/faults.sh`).

Each scenario starts its own components on loopback (a throwaway
ZooKeeper from Debian's package, `rpc-proxy`, two `rpc-bench-server`
endpoints or an `rpc-lb` with two workers), runs `rpc-bench` in open loop
through the proxy for the whole scenario, injects the fault a third of the
way in, lifts it two thirds in, and reports:

- calls made, and calls failed (exceptions, wrong or lost replies): seen
  against allowed. Allowed is 0 where nothing needs to fail; where calls
  are in flight on a peer that dies or stalls, it is the share of the load
  that can reach that peer before the proxy (or LB) can know: for a
  process killed, what is in flight at that instant (bounded by 100 ms of
  its share); for a stall, its share over two heartbeat intervals (the
  first missed heartbeat shuns it) plus what was in flight;
- detection: fault → the proxy's (or LB's) status page no longer shows
  the peer serving; recovery: fault lifted → serving again (status pages
  polled every 20 ms).

`--quick` runs a bounded subset with short scenarios (CI).
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from .procs import ROOT, ComponentError, Proc, free_port, probe, wait_until
from .suite import Suite

ZK_CLASSPATH = "/usr/share/java/zookeeper.jar:/etc/zookeeper/conf"
POLL = 0.02


class ZooKeeper:
    """A throwaway ZooKeeper server; stop() and start() keep its port and data."""

    def __init__(self, tmp, logdir):
        self.port = free_port()
        self.hosts = f"127.0.0.1:{self.port}"
        self.data = os.path.join(tmp, "zk-data")
        os.makedirs(self.data)
        self.logdir = logdir
        self.proc = None
        self.n = 0

    def start(self):
        self.n += 1
        argv = ["java", "-Dzookeeper.admin.enableServer=false", "-cp", ZK_CLASSPATH,
                "org.apache.zookeeper.server.ZooKeeperServerMain", self.port, self.data]
        self.proc = Proc(f"zookeeper{self.n}", argv, self.logdir)
        wait_until("ZooKeeper answering", lambda: self._ruok(), [self.proc], timeout=30)

    def _ruok(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"srvr")
                return b"Zookeeper version" in s.recv(256)
        except OSError:
            return False

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


def status(addr):
    try:
        with urllib.request.urlopen(f"http://{addr}/status", timeout=1) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


class Watch:
    """Polls a predicate over a status page; records when it turned false
    after the fault and true again after the fault was lifted."""

    def __init__(self, page, serving):
        self.page, self.serving = page, serving
        self.fault_at = self.lifted_at = None
        self.detected = self.recovered = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._stop.is_set():
            doc = status(self.page)
            now = time.monotonic()
            if doc is not None:
                ok = self.serving(doc)
                if self.fault_at and self.detected is None and not ok:
                    self.detected = now - self.fault_at
                if self.lifted_at and self.recovered is None and ok:
                    self.recovered = now - self.lifted_at
            time.sleep(POLL)

    def close(self):
        self._stop.set()
        self._t.join(2)


def endpoint_up(address):
    """The proxy's view: `address` up for some service."""
    def up(doc):
        return any(e.get("endpoint") == address and e.get("state") == "Up" for e in doc.get("endpoints", []))
    return up


def worker_serving(pid):
    def up(doc):
        return any(w.get("pid") == pid and w.get("state") == "serving" for w in doc.get("workers", []))
    return up


class Faults:
    def __init__(self, a):
        self.a = a
        self.s = Suite(a)
        self.zk = ZooKeeper(self.s.tmp, self.s.logdir)
        self.zk.start()
        self.s.registry = self.zk.hosts
        self.rows = []
        self.ok = True
        self.n = 0

    def hb(self):
        return {"heartbeat_interval_ms": self.a.heartbeat_interval_ms,
                "heartbeat_timeout_ms": self.a.heartbeat_timeout_ms}

    def proxy(self, name, page=True):
        more = dict(self.hb())
        if page:
            more["metrics_address"] = f"127.0.0.1:{free_port()}"
        p, tcp, _ = self.s.proxy(name, **more)
        p.page = more.get("metrics_address")
        return p, tcp

    def load(self, target, service, duration):
        """rpc-bench in open loop for `duration` s; returns a function that
        waits for it and gives (calls, failed)."""
        self.n += 1
        out = os.path.join(self.s.tmp, f"load{self.n}.json")
        argv = [self.a.bench_bin, "-t", target, "--service", service, "-c", 4, "-r", self.a.rate,
                "-D", duration, "-w", 0, "--timeout", 5, "-q", "--json", out, "--allow-exceptions"]
        p = subprocess.Popen([str(x) for x in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def done():
            _, err = p.communicate(timeout=duration + 30)
            if not os.path.exists(out):
                raise ComponentError(f"rpc-bench wrote no report: {err.decode()[-500:]}")
            with open(out) as f:
                c = json.load(f)["counts"]
            return c["sent"], c["exceptions"] + c["wrong"] + c["lost"]
        return done

    def scenario(self, name, allowed_why, setup, inject, lift, serving=None, allowed=0):
        """Runs one scenario: `setup()` → (target, service, page, teardown);
        `inject()` and `lift()` the fault; `serving(doc)` for the watch."""
        d = self.a.duration
        print(f"==> {name}", flush=True)
        target, service, page, teardown = setup()
        watch = Watch(page, serving) if (serving and page) else None
        finish = self.load(target, service, d)
        try:
            time.sleep(d / 3)
            if watch:
                watch.fault_at = time.monotonic()
            inject()
            time.sleep(d / 3)
            if watch:
                watch.lifted_at = time.monotonic()
            lift()
            calls, failed = finish()
        finally:
            if watch:
                watch.close()
            teardown()
        fmt = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
        passed = failed <= allowed
        self.ok &= passed
        self.rows.append([name, f"{self.a.rate}", f"{calls:,}", f"{allowed} ({allowed_why})", f"{failed}",
                          fmt(watch.detected) if watch else "-", fmt(watch.recovered) if watch else "-",
                          "ok" if passed else "FAIL"])
        print(f"    calls {calls}, failed {failed} (allowed {allowed}), "
              f"detection {fmt(watch.detected) if watch else '-'}, recovery {fmt(watch.recovered) if watch else '-'}",
              flush=True)

    # --- components ----------------------------------------------------

    def two_services(self, tag):
        svc = f"svc{tag}"
        a, a_addr = self.s.service(f"{svc}-a", svc)
        b, b_addr = self.s.service(f"{svc}-b", svc)
        proxy, tcp = self.proxy(f"proxy-{tag}")
        wait_until("proxy routes", lambda: probe(tcp, f"{svc}:echo"), [proxy, a, b])
        wait_until("both endpoints up", lambda: all(endpoint_up(x)(status(proxy.page) or {})
                                                   for x in (a_addr, b_addr)), [proxy, a, b])
        return svc, (a, a_addr), (b, b_addr), proxy, tcp

    def restart_service(self, name, svc, addr):
        cfg = self.s.ini(name, service=svc)
        p = self.s.start(name, [self.a.server_bin, "--listen", addr, "-c", cfg, "-T", 1])
        wait_until(f"{name} registered", lambda: "registered " in p.output(), [p])
        return p

    def share(self, seconds):
        """Calls of one of two peers over `seconds` (at least 1)."""
        return max(1, int(self.a.rate / 2 * seconds))

    # --- scenarios -----------------------------------------------------

    def kill9(self):
        st = {}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("kill")
            st.update(svc=svc, a=a, b=b, proxy=proxy)
            return tcp, svc, proxy.page, lambda: self.s.stop(st["a"][0], b[0], proxy)

        def inject():
            st["a"][0].p.send_signal(signal.SIGKILL)

        def lift():
            st["a"] = (self.restart_service("svckill-a2", st["svc"], st["a"][1]), st["a"][1])

        self.scenario("kill -9 of one of two endpoints", "in flight on it", setup, inject, lift,
                      serving=lambda doc: endpoint_up(st["a"][1])(doc), allowed=self.share(0.1))

    def sigstop(self):
        st = {}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("stop")
            st.update(a=a)
            return tcp, svc, proxy.page, lambda: (a[0].p.send_signal(signal.SIGCONT),
                                                  self.s.stop(a[0], b[0], proxy))

        iv = self.a.heartbeat_interval_ms / 1000
        self.scenario("SIGSTOP of one of two endpoints (stalled peer)", "its share over 2 heartbeat intervals",
                      setup, lambda: st["a"][0].p.send_signal(signal.SIGSTOP),
                      lambda: st["a"][0].p.send_signal(signal.SIGCONT),
                      serving=lambda doc: endpoint_up(st["a"][1])(doc), allowed=self.share(2 * iv + 0.1))

    def rolling_restart(self):
        st = {}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("roll")
            st.update(svc=svc, a=a, b=b, proxy=proxy, tcp=tcp)
            return tcp, svc, proxy.page, lambda: self.s.stop(st["a"][0], st["b"][0], proxy)

        def roll(key):
            p, addr = st[key]
            p.p.send_signal(signal.SIGTERM)
            p.p.wait(30)
            st[key] = (self.restart_service(f"svcroll-{key}2", st["svc"], addr), addr)
            wait_until("back in the proxy", lambda: endpoint_up(addr)(status(st["proxy"].page) or {}),
                       [st["proxy"]])

        self.scenario("rolling restart of both endpoints (SIGTERM, start)", "none", setup,
                      lambda: roll("a"), lambda: roll("b"))

    def zk_outage(self):
        def setup():
            svc, a, b, proxy, tcp = self.two_services("zk")
            return tcp, svc, proxy.page, lambda: self.s.stop(a[0], b[0], proxy)

        self.scenario("ZooKeeper down for a third of the run", "none", setup, self.zk.stop, self.zk.start)

    def garbage(self):
        st = {"stop": threading.Event()}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("garbage")
            host, port = tcp.rsplit(":", 1)
            st.update(addr=(host, int(port)))
            return tcp, svc, proxy.page, lambda: self.s.stop(a[0], b[0], proxy)

        def spray():
            rnd = random.Random(1)
            while not st["stop"].is_set():
                try:
                    with socket.create_connection(st["addr"], timeout=1) as c:
                        c.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 512))))
                        c.settimeout(0.2)
                        try:
                            c.recv(4096)
                        except OSError:
                            pass
                except OSError:
                    pass

        def inject():
            st["threads"] = [threading.Thread(target=spray, daemon=True) for _ in range(4)]
            for t in st["threads"]:
                t.start()

        def lift():
            st["stop"].set()
            for t in st["threads"]:
                t.join(5)

        self.scenario("garbage input on 4 connections at a time", "none", setup, inject, lift)

    def slowloris(self):
        st = {"conns": []}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("slow")
            host, port = tcp.rsplit(":", 1)
            st.update(addr=(host, int(port)))
            return tcp, svc, proxy.page, lambda: self.s.stop(a[0], b[0], proxy)

        def inject():
            for _ in range(self.a.slowloris):
                try:
                    c = socket.create_connection(st["addr"], timeout=1)
                    c.sendall(b"\x00\x00")
                    st["conns"].append(c)
                except OSError:
                    pass

        def lift():
            for c in st["conns"]:
                c.close()

        self.scenario(f"slowloris: {self.a.slowloris} connections stalled mid-header", "none", setup, inject, lift)

    def lb_worker_stop(self):
        st = {}

        def setup():
            proxy, tcp = self.proxy("proxy-lbstop")
            page = f"127.0.0.1:{free_port()}"
            lb, ws = self.s.lb("lb-stop", "lbstop", workers=2, pool=4, dispatch="least_loaded",
                               metrics_address=page, **self.hb())
            wait_until("proxy → LB", lambda: probe(tcp, "lbstop:echo"), [proxy, lb] + ws)
            doc = {}
            wait_until("worker pids known", lambda: len([w for w in (status(page) or {}).get("workers", [])
                                                         if w.get("pid")]) == 2, [lb])
            doc = status(page)
            pids = sorted(w["pid"] for w in doc["workers"])
            st.update(w=[w for w in ws if w.pid in pids][0])
            return tcp, "lbstop", page, lambda: (st["w"].p.send_signal(signal.SIGCONT), self.s.stop(lb, *ws, proxy))

        iv = self.a.heartbeat_interval_ms / 1000
        self.scenario("SIGSTOP of one of an LB's two workers", "its share over 2 heartbeat intervals", setup,
                      lambda: st["w"].p.send_signal(signal.SIGSTOP),
                      lambda: st["w"].p.send_signal(signal.SIGCONT),
                      serving=lambda doc: worker_serving(st["w"].pid)(doc), allowed=self.share(2 * iv + 0.1))

    def proxy_upgrade(self):
        st = {}

        def setup():
            svc, a, b, proxy, tcp = self.two_services("up")
            st.update(proxy=proxy, cfg=os.path.join(self.s.tmp, "proxy-up.ini"))
            return tcp, svc, None, lambda: self.s.stop(a[0], b[0], st["proxy"], st.get("new"))

        def inject():
            st["new"] = self.s.start("proxy-up-new", [self.a.proxy_bin, "-c", st["cfg"], "--upgrade",
                                                      "--log-level", "warn"])
            st["proxy"].p.wait(30)

        self.scenario("proxy upgrade (--upgrade beside the running one)", "none", setup, inject, lambda: None)

    SCENARIOS = ["kill9", "sigstop", "rolling_restart", "zk_outage", "garbage", "slowloris",
                 "lb_worker_stop", "proxy_upgrade"]
    QUICK = ["kill9", "sigstop", "zk_outage", "lb_worker_stop"]

    def run(self, names):
        for n in names:
            try:
                getattr(self, n)()
            except (ComponentError, subprocess.TimeoutExpired) as e:
                self.ok = False
                self.rows.append([n, "-", "-", "-", "-", "-", "-", f"FAIL: {e}"])
                print(f"    {n}: {e}", file=sys.stderr, flush=True)
                self.s.stop_all()

    def table(self):
        cols = ["scenario", "load (calls/s)", "calls", "failed allowed", "failed seen", "detection",
                "recovery", ""]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def close(self):
        self.s.stop_all()
        self.zk.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a bounded subset, short scenarios (CI)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per scenario (default 15, quick 6)")
    ap.add_argument("--rate", type=int, default=2000, help="calls per second of the load")
    ap.add_argument("--only", action="append", choices=Faults.SCENARIOS, help="run only this scenario")
    ap.add_argument("--heartbeat-interval-ms", type=int, default=200)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=1000)
    ap.add_argument("--slowloris", type=int, default=500, help="connections of the slowloris scenario")
    ap.add_argument("--debug", action="store_true", help="target/debug binaries (default: release)")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    a = ap.parse_args()
    a.duration = a.duration or (6.0 if a.quick else 15.0)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    rel = os.path.join(target, "debug" if a.debug else "release")
    a.bench_bin, a.server_bin = os.path.join(rel, "rpc-bench"), os.path.join(rel, "rpc-bench-server")
    a.proxy_bin, a.lb_bin = os.path.join(rel, "rpc-proxy"), os.path.join(rel, "rpc-lb")
    for b in [a.bench_bin, a.server_bin, a.proxy_bin, a.lb_bin]:
        if not os.access(b, os.X_OK):
            sys.exit(f"faults: missing binary {b} (cargo build{'' if a.debug else ' --release'})")
    names = a.only or (Faults.QUICK if a.quick else Faults.SCENARIOS)
    # What the components' Suite reads.
    a.zk, a.proxy_threads, a.lb_threads, a.client_threads, a.python_worker = None, 0, 0, 1, None
    a.warmup, a.rounds = 0.0, 1
    started = time.monotonic()
    f = Faults(a)
    try:
        f.run(names)
    finally:
        f.close()
    table = f.table()
    print()
    print(f"Fault scenarios: {a.rate} calls/s open loop through rpc-proxy, {a.duration:g} s each, fault "
          f"from {a.duration / 3:g} s to {2 * a.duration / 3:g} s; heartbeat {a.heartbeat_interval_ms} ms, "
          f"timeout {a.heartbeat_timeout_ms} ms")
    print(table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    passed = sum(1 for r in f.rows if r[-1] == "ok")
    print(f"faults: {passed} passed, {len(f.rows) - passed} failed ({time.monotonic() - started:.0f} s)")
    if f.ok:
        shutil.rmtree(f.s.tmp, ignore_errors=True)
    else:
        print(f"logs kept in {f.s.logdir}", file=sys.stderr)
    sys.exit(0 if f.ok else 1)


if __name__ == "__main__":
    main()
