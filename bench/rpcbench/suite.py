"""The suite: components started in a temporary directory, and rpc-bench
runs against them with the CPU and memory of the processes on the path."""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

from .procs import (
    ROOT, ComponentError, Proc, RssSampler, can_connect, free_port, probe, wait_until,
)


class Suite:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="rpc-bench-")
        self.logdir = os.path.join(self.tmp, "logs")
        os.makedirs(self.logdir)
        self.procs = []
        self.sections = []
        self.runs = []
        self.failures = []
        self.notes = []
        self.seq = 0
        if args.zk:
            self.registry = args.zk
            self.product = f"bench_{os.getpid()}"
        else:
            self.registry = "local:" + os.path.join(self.tmp, "registry")
            self.product = "test"
        if args.quick:
            self.duration, self.warmup, self.rounds = 1.0, 0.3, 1
        else:
            self.duration, self.warmup, self.rounds = args.duration, args.warmup, args.rounds

    # components

    def start(self, name, argv, env=None):
        p = Proc(name, argv, self.logdir, env=env)
        self.procs.append(p)
        return p

    def stop(self, *procs):
        for p in procs:
            if p is None:
                continue
            p.stop()
            if p in self.procs:
                self.procs.remove(p)

    def stop_all(self):
        for p in reversed(self.procs):
            p.stop()
        self.procs = []

    def ini(self, name, **keys):
        path = os.path.join(self.tmp, name + ".ini")
        keys.setdefault("zk", self.registry)
        keys.setdefault("product", self.product)
        with open(path, "w") as f:
            for k, v in keys.items():
                f.write(f"{k}={v}\n")
        return path

    def service(self, name, service, delay_ms=0, **keys):
        """A benchmark service on TCP that registers `service`; `keys`:
        further config.ini keys."""
        addr = f"127.0.0.1:{free_port()}"
        cfg = self.ini(name, service=service, **keys)
        p = self.start(
            name,
            [self.a.server_bin, "--listen", addr, "-c", cfg, "--delay-ms", delay_ms, "-T", 1],
        )
        # Registered before anything that reads the registry starts, so a
        # proxy's first view already holds every endpoint.
        wait_until(f"{name} registered", lambda: "registered " in p.output(), [p])
        return p, addr

    def proxy(self, name, balance=None, **more):
        """A proxy on TCP and a Unix socket; `more`: further config.ini keys."""
        tcp = f"127.0.0.1:{free_port()}"
        unix = os.path.join(self.tmp, name + ".sock")
        keys = {"proxy_address": f"{tcp},{unix}", "threads": self.a.proxy_threads, **more}
        if balance:
            keys["balance"] = balance
        cfg = self.ini(name, **keys)
        p = self.start(name, [self.a.proxy_bin, "-c", cfg, "--log-level", "warn"])
        wait_until(f"{name} listening", lambda: can_connect(tcp), [p])
        return p, tcp, unix

    def lb(self, name, service, workers, pool, dispatch, python=False, back="unix", prefetch=0, **keys):
        """An rpc-lb with `workers` worker processes dialling in on a Unix
        socket (`back="unix"`, the documented default) or TCP; `keys`: more
        config.ini keys."""
        front = free_port()
        if back == "unix":
            back = os.path.join(self.tmp, name + "-back.sock")
        else:
            back = f"127.0.0.1:{free_port()}"
        cfg = self.ini(
            name,
            service=service,
            front_host="127.0.0.1",
            front_port=front,
            back_address=back,
            worker_pool_size=pool,
            worker_prefetch=prefetch,
            dispatch=dispatch,
            register_delay=0,
            threads=self.a.lb_threads,
            **keys,
        )
        lb = self.start(name, [self.a.lb_bin, "-c", cfg, "--log-level", "warn"])
        wait_until(f"{name} listening", lambda: can_connect(f"127.0.0.1:{front}"), [lb])
        ws = []
        for i in range(workers):
            if python:
                argv = self.a.python_worker.format(config=cfg, back=back, pool=pool).split()
                env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
                ws.append(self.start(f"{name}-pyworker{i}", argv, env=env))
            else:
                ws.append(
                    self.start(
                        f"{name}-worker{i}",
                        [self.a.server_bin, "--worker", back, "--pool-size", pool, "-T", 1],
                    )
                )
        lb.front = f"127.0.0.1:{front}"
        return lb, ws

    def stock_python(self, name):
        """The bench service in a stock Thrift Python server (TForkingServer:
        one process per connection), the reference for the Python rows."""
        addr = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        p = self.start(name, [sys.executable, os.path.join(ROOT, "bench", "stock_server.py"),
                              "--listen", addr], env=env)
        wait_until(f"{name} serving", lambda: probe(addr, "echo"), [p])
        return p, addr

    def otlp_sink(self, name):
        """A local OTLP/HTTP receiver that discards what it gets: (proc, URL)."""
        addr = f"127.0.0.1:{free_port()}"
        p = self.start(name, [sys.executable, os.path.join(ROOT, "bench", "rpcbench", "otlp_sink.py"),
                              "--listen", addr])
        wait_until(f"{name} listening", lambda: can_connect(addr), [p])
        return p, f"http://{addr}"

    def haproxy(self, backend, name="haproxy"):
        exe = shutil.which("haproxy")
        if not exe:
            return None, None
        port = free_port()
        # HAProxy reserves two descriptors per connection up front.
        maxconn = max(100, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200) // 2)
        cfg = os.path.join(self.tmp, name + ".cfg")
        with open(cfg, "w") as f:
            f.write(
                f"global\n    nbthread 1\n    maxconn {maxconn}\n"
                "defaults\n    mode tcp\n    timeout connect 5s\n"
                "    timeout client 60s\n    timeout server 60s\n"
                f"listen bench\n    bind 127.0.0.1:{port}\n    server s1 {backend}\n"
            )
        p = self.start(name, [exe, "-f", cfg, "-db"])
        addr = f"127.0.0.1:{port}"
        wait_until(f"{name} listening", lambda: can_connect(addr), [p])
        return p, addr

    # load

    def bench(self, label, target, procs, conns, depth, payload=64, direct=False,
              service="bench", rate=None, slow=0.0, slow_ms=50, idle=0, idle_partial=0, duration=None,
              warmup=None):
        """Runs rpc-bench; returns its report with CPU and RSS of `procs`."""
        duration = self.duration if duration is None else duration
        warmup = self.warmup if warmup is None else warmup
        self.seq += 1
        out = os.path.join(self.tmp, f"run{self.seq}.json")
        argv = [
            self.a.bench_bin, "-t", target, "-c", conns, "-d", depth, "-p", payload,
            "-D", duration, "-w", warmup, "-T", self.a.client_threads,
            "--service", service, "-q", "--json", out,
        ]
        if direct:
            argv.append("--direct")
        if rate:
            argv += ["-r", rate]
        if slow:
            argv += ["--slow-fraction", slow, "--slow-ms", slow_ms]
        if idle:
            argv += ["--idle-connections", idle]
        if idle_partial:
            argv += ["--idle-partial", idle_partial]
        argv = [str(a) for a in argv]
        for p in procs:
            p.check()
        rss_idle = {p.name: p.rss_kib() for p in procs}
        cpu0 = {p.name: p.cpu_seconds() for p in procs}
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with RssSampler(procs) as sampler:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=duration + warmup + 120)
        cpu1 = {p.name: p.cpu_seconds() for p in procs}
        for p in procs:
            if cpu1[p.name] is not None:
                cpu1[p.name] += sampler.child_cpu(p.name)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        if r.returncode == 2 or not os.path.exists(out):
            raise ComponentError(f"{label}: rpc-bench could not run: {r.stderr.decode(errors='replace')[-2000:]}")
        with open(out) as f:
            rep = json.load(f)
        answered = rep["counts"]["ok"] + rep["counts"]["expected_exceptions"]
        rep["label"] = label
        rep["cpu_s_per_m"] = {
            n: ((cpu1[n] - cpu0[n]) / answered * 1e6 if answered and cpu0[n] is not None and cpu1[n] is not None else None)
            for n in cpu0
        }
        # The generator's own CPU: near 100 % of its threads would make it
        # the bottleneck.
        rep["client_cpu_percent"] = round(100.0 * client_cpu / max(duration + warmup, 1e-9), 1)
        rep["rss_kib_idle"] = rss_idle
        rep["rss_kib_load"] = dict(sampler.peak)
        self.runs.append(rep)
        if not rep["passed"]:
            self.failures.append(f"{label}: " + "; ".join(rep["errors"][:3] or ["failed"]))
        for p in procs:
            p.check()
        status = "ok" if rep["passed"] else "FAIL"
        print(f"  {label:<48} {rep['throughput_rps']:>10,.0f} req/s  p50 {rep['latency']['p50_us']:>6} us"
              f"  p99 {rep['latency']['p99_us']:>7} us  {status}", flush=True)
        return rep

    def section(self, title, columns, rows, notes=()):
        self.sections.append({"title": title, "columns": columns, "rows": rows, "notes": list(notes)})
