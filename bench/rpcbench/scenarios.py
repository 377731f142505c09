"""The scenarios, each a function of the suite and the shared components,
listed in SCENARIOS (run in that order, or the ones `--only` names)."""

import os
import shutil
import subprocess

from .procs import ComponentError, probe, wait_until


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_cpu(rep, names):
    parts = []
    for n in names:
        v = rep["cpu_s_per_m"].get(n)
        if v is not None:
            parts.append(f"{v:.1f}")
    return " + ".join(parts) if parts else "—"


def fmt_rss(rep, names):
    parts = []
    for n in names:
        i, l = rep["rss_kib_idle"].get(n), rep["rss_kib_load"].get(n)
        if i or l:
            parts.append(f"{fmt_int(i)} → {fmt_int(l)}")
    return "; ".join(parts) if parts else "—"


def best(reps):
    return max(reps, key=lambda r: (r["passed"], r["throughput_rps"]))


def scenario_paths(s, paths, shapes, payloads):
    """Throughput and latency of every path, alternating rounds."""
    rows = []
    for payload in payloads:
        for (c, d) in shapes:
            results = {}
            for rnd in range(s.rounds):
                for (name, target, procs, opts) in paths:
                    label = f"{c}x{d} {payload}B {name}" + (f" (round {rnd + 1})" if s.rounds > 1 else "")
                    rep = s.bench(label, target, procs, c, d, payload=payload, **opts)
                    results.setdefault(name, []).append(rep)
            direct = best(results["direct"])["throughput_rps"] if "direct" in results else None
            for (name, target, procs, opts) in paths:
                r = best(results[name])
                lat = r["latency"]
                ratio = f"{r['throughput_rps'] / direct:.2f}" if direct else "—"
                names = [p.name for p in procs]
                rows.append([
                    f"{c}×{d}" + ("" if payload == 64 else f", {human_bytes(payload)}"),
                    name, fmt_int(r["throughput_rps"]), lat["p50_us"], lat["p99_us"], lat["p999_us"],
                    ratio, fmt_cpu(r, names), fmt_rss(r, names), f"{r['client_cpu_percent']:.0f}",
                ])
    return rows


def human_bytes(n):
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1 << 10:
        return f"{n >> 10} KiB"
    return f"{n} B"


class Components:
    """The components the scenarios share, started when first needed."""

    def __init__(self, s):
        self.s = s
        self._made = {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def service(self):
        """The Rust bench service (`bench`), registered: (proc, address)."""
        return self._once("service", lambda: self.s.service("service", "bench"))

    def proxy(self):
        """A proxy routing to the service: (proc, tcp, unix)."""
        def make():
            svc, _ = self.service()
            p = self.s.proxy("proxy")
            wait_until("proxy routes to the service", lambda: probe(p[1], "bench:echo"), [svc, p[0]])
            return p
        return self._once("proxy", make)

    def haproxy(self):
        """HAProxy in front of the service, or (None, None)."""
        return self._once("haproxy", lambda: self.s.haproxy(self.service()[1]))

    def lb(self, name, service, workers, pool, python=False, back="unix", prefetch=0):
        """An LB registered as `service` behind the proxy: (lb, workers),
        or (None, None) where it cannot run."""
        def make():
            s = self.s
            if s.a.lb_bin is None:
                s.notes.append("proxy + lb rows skipped: no rpc-lb binary")
                return None, None
            if python and not s.a.python_worker:
                s.notes.append("Python worker rows skipped: no Python bench worker (see bench/README.md)")
                return None, None
            proxy, tcp, _ = self.proxy()
            lb = ws = None
            try:
                lb, ws = s.lb(name, service, workers=workers, pool=pool, dispatch="least_loaded",
                              python=python, back=back, prefetch=prefetch)
                wait_until(f"proxy → {name}", lambda: probe(tcp, f"{service}:echo"), [proxy, lb] + ws)
            except ComponentError as e:
                if not python:
                    raise
                s.failures.append(f"Python workers: {e}")
                s.stop(lb, *(ws or []))
                return None, None
            return lb, ws
        return self._once(("lb", name), make)


def rust_paths(s, k):
    """direct, HAProxy TCP (if installed), proxy, proxy + lb (Rust workers)."""
    proxy, proxy_tcp, _ = k.proxy()
    svc, svc_addr = k.service()
    lb, _ = k.lb("lb", "benchlb", workers=4, pool=4)
    hap, hap_addr = k.haproxy()
    paths = [("direct", svc_addr, [svc], {"direct": True})]
    if hap:
        paths.append(("HAProxy TCP", hap_addr, [hap], {"direct": True}))
    paths.append(("proxy", proxy_tcp, [proxy], {}))
    if lb:
        paths.append(("proxy + lb", proxy_tcp, [proxy, lb], {"service": "benchlb"}))
    return paths


def scenario_paths_main(s, k):
    a = s.a
    paths = rust_paths(s, k)
    if k.haproxy()[0] is None:
        s.notes.append("HAProxy TCP rows skipped: haproxy is not installed (apt-get install haproxy)")
    pylb, _ = k.lb("lb-py", "benchpy", workers=4, pool=4, python=True)
    if pylb:
        proxy, proxy_tcp, _ = k.proxy()
        paths.append(("proxy + lb (Python)", proxy_tcp, [proxy, pylb], {"service": "benchpy"}))

    shapes = [(4, 8), (1, 1)] if a.quick else [(4, 8), (16, 16), (1, 1)]
    rows = scenario_paths(s, paths, shapes, [64])
    s.section(
        "Throughput and latency (64 B payload)", PATH_COLUMNS, rows,
        [f"closed loop C×D = C connections × D requests in flight; {s.duration:g} s after {s.warmup:g} s warm-up"
         + (f", best of {s.rounds} alternating rounds" if s.rounds > 1 else ""),
         "CPU: seconds of the process(es) in the path per million requests (service for direct; proxy + lb for proxy + lb)",
         "proxy + lb: proxy → rpc-lb → 4 worker processes (pool 4 each) dialling the LB",
         f"client CPU %: the load generator's CPU time over the run ({a.client_threads} runtime thread(s))"],
    )


def scenario_payloads(s, k):
    payloads = [16 << 10] if s.a.quick else [16 << 10, 1 << 20]
    rows = scenario_paths(s, rust_paths(s, k), [(4, 8)], payloads)
    s.section("Payload sizes (4×8)", PATH_COLUMNS, rows)


def scenario_unix(s, k):
    proxy, proxy_tcp, proxy_unix = k.proxy()
    rows = []
    for (c, d) in ([(4, 8)] if s.a.quick else [(4, 8), (1, 1)]):
        for (name, target) in [("TCP", proxy_tcp), ("Unix", proxy_unix)]:
            r = s.bench(f"{c}x{d} proxy via {name}", target, [proxy], c, d)
            rows.append([f"{c}×{d}", name, fmt_int(r["throughput_rps"]), r["latency"]["p50_us"],
                         r["latency"]["p99_us"], fmt_cpu(r, ["proxy"])])
    s.section("Client → proxy over TCP or a Unix socket", ["shape", "client socket", "req/s", "p50 µs", "p99 µs", "CPU s / 1M req"], rows)


def scenario_idle(s, k):
    proxy, proxy_tcp, _ = k.proxy()
    rows = []
    for n in ([1, 100] if s.a.quick else [1, 100, 1000, 10000]):
        idle = s.bench(f"{n} idle conns, near idle", proxy_tcp, [proxy], 1, 1, rate=50, idle=n,
                       duration=min(1.0, s.duration), warmup=0)
        loaded = s.bench(f"{n} idle conns + 4x8 load", proxy_tcp, [proxy], 4, 8, idle=n)
        ok = idle["idle_connections_open"] == n and loaded["idle_connections_open"] == n
        rows.append([fmt_int(n), fmt_int(idle["rss_kib_load"]["proxy"]), fmt_int(loaded["throughput_rps"]),
                     loaded["latency"]["p99_us"], fmt_int(loaded["rss_kib_load"]["proxy"]),
                     "" if ok else "not all connections opened"])
    s.section("Idle connection scaling (proxy)",
              ["idle connections", "proxy RSS KiB, idle", "req/s with 4×8 load", "p99 µs", "proxy RSS KiB, loaded", ""], rows)
    # Connections that sent the start of a frame and then nothing (a peer
    # stalled mid-frame, or a slowloris) should cost what idle ones do.
    # A fresh proxy per row: an allocator keeps what earlier rows used.
    n = 100 if s.a.quick else 1000
    rows = []
    base = None
    for partial, what in [(0, "nothing (idle)"), (2, "2 bytes of the length prefix"),
                          (20, "the length prefix and 16 bytes of the header")]:
        p, tcp, _ = s.proxy(f"proxy-partial{partial}")
        wait_until("fresh proxy routes", lambda: probe(tcp, "bench:echo"), [p])
        r = s.bench(f"{n} conns sent {partial} B, near idle", tcp, [p], 1, 1, rate=50, idle=n,
                    idle_partial=partial, duration=min(1.0, s.duration), warmup=0)
        s.stop(p)
        rss = r["rss_kib_load"][p.name]
        base = rss if base is None else base
        rows.append([fmt_int(n), what, fmt_int(rss), f"{(rss - base) * 1024 / n:+.0f}",
                     "" if r["idle_connections_open"] == n else "not all connections opened"])
    s.section("Connections stalled mid-frame (proxy)",
              ["connections", "each sent", "proxy RSS KiB", "bytes per connection vs idle", ""], rows,
              ["each connection sends its bytes once and falls silent (frame_timeout, 30 s by default, "
               "closes it later); 50 req/s of load on one more connection"])


def scenario_lb_dispatch(s, k):
    if s.a.lb_bin is None:
        s.notes.append("LB dispatch rows skipped: no rpc-lb binary")
        return
    proxy, proxy_tcp, _ = k.proxy()
    rows = []
    for dispatch, prefetch in [("least_loaded", 0), ("least_loaded", 1), ("round_robin", 0)]:
        name = "lb-" + dispatch.replace("_", "") + str(prefetch)
        service = "bench" + dispatch.replace("_", "") + str(prefetch)
        l, ws = s.lb(name, service, workers=4, pool=1, dispatch=dispatch, prefetch=prefetch)
        wait_until(f"proxy → {name}", lambda: probe(proxy_tcp, f"{service}:echo"), [proxy, l] + ws)
        label = dispatch + (f", worker_prefetch={prefetch}" if prefetch else "")
        # Straight to the LB: its replies come back in any order, so
        # only dispatch decides whether a fast call waits.
        r = s.bench(f"2% slow, lb dispatch={label}", l.front, [l], 4, 1, direct=True,
                    rate=1000, slow=0.02, slow_ms=50)
        f = r["latency_fast"]
        rows.append([label, fmt_int(r["throughput_rps"]), f["p50_us"], f["p99_us"], f["p999_us"],
                     r["latency_slow"]["p50_us"]])
        s.stop(l, *ws)
    s.section("2% slow calls (50 ms) among fast ones: rpc-lb dispatch",
              ["dispatch", "req/s", "fast p50 µs", "fast p99 µs", "fast p99.9 µs", "slow p50 µs"], rows,
              ["open loop, 1,000 req/s over 4 connections straight to an LB with 4 workers serving 1 call each "
               "(about one 50 ms call in flight on average); the original's fast-call p99 was 51.8 ms",
               "worker_prefetch=1: a worker busy with a call may hold one more, which then waits behind "
               "it even if another worker frees first"])


def scenario_balance(s, k):
    rows = []
    fast, _ = s.service("svc-fast", "bench2")
    slow, _ = s.service("svc-slow", "bench2", delay_ms=20)
    for balance in ["p2c", "round_robin"]:
        p, tcp, _ = s.proxy("proxy-" + balance.replace("_", ""), balance=balance)
        wait_until(f"proxy balance={balance} routes", lambda: probe(tcp, "bench2:echo"), [p, fast, slow])
        for (c, d) in [(4, 4), (1, 1)]:
            r = s.bench(f"{c}x{d} one slow endpoint, balance={balance}", tcp, [p], c, d, service="bench2")
            rows.append([balance, f"{c}×{d}", fmt_int(r["throughput_rps"]), r["latency"]["p50_us"], r["latency"]["p99_us"]])
        s.stop(p)
    s.stop(fast, slow)
    s.section("One of two endpoints slow (+20 ms per call): rpc-proxy balance",
              ["balance", "shape", "req/s", "p50 µs", "p99 µs"], rows,
              ["p2c: cost = latency estimate × (outstanding + 1), so even one call at a time avoids the "
               "slow endpoint (it is tried again every few seconds as its estimate decays); "
               "round_robin sends it half the calls",
               "the original (round-robin): 765 req/s, p50 21.4 ms at 4×4; 92 req/s at 1×1"])


def scenario_python(s, k):
    """Python services: the stock Thrift server against the LB chain with
    Python workers, with the Rust-worker chain and HAProxy for the hops."""
    if not s.a.python_worker:
        s.notes.append("Python section skipped: no Python bench worker (see bench/README.md)")
        return
    proxy, proxy_tcp, _ = k.proxy()
    svc, svc_addr = k.service()
    try:
        stock, stock_addr = s.stock_python("stock-python")
    except ComponentError as e:
        s.failures.append(f"stock Thrift Python server: {e}")
        return
    paths = [("stock Thrift Python (TForkingServer)", stock_addr, [stock], {"direct": True})]
    for pool in (1, 4):
        for back, prefetch in (("tcp", 0), ("unix", 0), ("unix", 2)):
            service = f"benchpy{pool}{back}{prefetch}"
            lb, ws = k.lb(f"lb-py{pool}{back}{prefetch}", service, workers=4, pool=pool, python=True,
                          back=back, prefetch=prefetch)
            if lb:
                name = f"proxy + lb + Python, pool {pool}" + (f", prefetch {prefetch}" if prefetch else "")
                paths.append((f"{name}, {back} back", proxy_tcp, [proxy, lb] + ws, {"service": service}))
    paths.append(("direct (Rust service)", svc_addr, [svc], {"direct": True}))
    hap, hap_addr = k.haproxy()
    if hap:
        paths.append(("HAProxy TCP → Rust service", hap_addr, [hap], {"direct": True}))
    paths.append(("proxy → Rust service", proxy_tcp, [proxy], {}))
    lb, ws = k.lb("lb-rust1", "benchrust1", workers=4, pool=1)
    if lb:
        paths.append(("proxy + lb + Rust workers, pool 1, unix back", proxy_tcp, [proxy, lb] + ws,
                      {"service": "benchrust1"}))
    shapes = [(4, 8), (4, 1), (1, 1)]
    results = {}
    for (c, d) in shapes:
        for rnd in range(s.rounds):
            for (name, target, procs, opts) in paths:
                label = f"{c}x{d} {name}" + (f" (round {rnd + 1})" if s.rounds > 1 else "")
                results.setdefault((c, d, name), []).append(s.bench(label, target, procs, c, d, **opts))
    rows = []
    for (c, d) in shapes:
        ref = best(results[(c, d, paths[0][0])])
        for (name, _, procs, _) in paths:
            r = best(results[(c, d, name)])
            lat = r["latency"]
            cpu = sum(v for v in r["cpu_s_per_m"].values() if v is not None)
            rows.append([f"{c}×{d}", name, fmt_int(r["throughput_rps"]), lat["p50_us"], lat["p99_us"],
                         f"{r['throughput_rps'] / ref['throughput_rps']:.2f}" if ref["throughput_rps"] else "—",
                         f"{lat['p50_us'] / ref['latency']['p50_us']:.1f}" if ref["latency"]["p50_us"] else "—",
                         f"{cpu:.1f}"])
    s.section(
        "Python services: the stock Thrift server beside the LB chain with Python workers",
        ["shape", "path", "req/s", "p50 µs", "p99 µs", "req/s × stock", "p50 × stock", "CPU s / 1M req (all)"],
        rows,
        ["the same handler (bench.thrift echo, 64 B) everywhere; Python: framed, accelerated binary (thrift's C extension)",
         "stock: thrift's TForkingServer, one process per connection (4 at 4×…, 1 at 1×1)",
         "proxy + lb + Python: client → rpc-proxy → rpc-lb → 4 rpc_sdk.RpcWorker processes "
         "(worker_pool_size 1 or 4), back address over TCP or a Unix socket; prefetch 2: "
         "worker_prefetch = 2 (a busy worker may hold 2 calls more, waiting inside it)",
         "Rust rows: the hops alone (direct, one HAProxy hop, the proxy, the proxy + LB chain)",
         "CPU (all): every process on the path, workers and forked children included, per million requests"],
    )


def scenario_tracing(s, k):
    """What spans per call cost the proxy: tracing off, and on at sampling
    1.0 and 0.01 with spans sent over OTLP/HTTP to a local sink; and the
    proxy + LB chain, off and on at both hops."""
    svc, svc_addr = k.service()
    proxy, proxy_tcp, _ = k.proxy()
    sink, sink_url = s.otlp_sink("otlp-sink")
    paths = [("direct", svc_addr, [svc], {"direct": True}), ("proxy, tracing off", proxy_tcp, [proxy], {})]
    lb, _ = k.lb("lb", "benchlb", workers=4, pool=4)
    if lb:
        paths.append(("proxy + lb, tracing off", proxy_tcp, [proxy, lb], {"service": "benchlb"}))
    traced = []
    for ratio in (1.0, 0.01):
        name = "proxy-trace-" + f"{ratio:g}".replace(".", "_")
        p, tcp, _ = s.proxy(name, otlp_endpoint=sink_url, trace_sample_ratio=ratio)
        traced.append(p)
        try:
            # Every call now carries the trace field (argument 32767).
            wait_until(f"{name} routes traced calls", lambda: probe(tcp, "bench:echo"), [svc, p, sink],
                       timeout=10)
        except ComponentError as e:
            s.failures.append(f"tracing, sampling {ratio:g}: the service did not answer a call carrying "
                              f"the trace field (a Thrift server must skip unknown field ids): {e}")
            continue
        paths.append((f"proxy, tracing on, sampling {ratio:g}", tcp, [p, sink], {}))
        if ratio == 1.0 and lb:
            # The same chain with an LB that traces too (its own spans,
            # children of the proxy's).
            lbt, ws = s.lb("lb-trace", "benchlbt", workers=4, pool=4, dispatch="least_loaded",
                           otlp_endpoint=sink_url, trace_sample_ratio=ratio)
            traced += [lbt, *ws]
            wait_until("proxy → traced LB", lambda: probe(tcp, "benchlbt:echo"), [p, lbt, sink] + ws)
            paths.append(("proxy + lb, tracing on at both, sampling 1", tcp, [p, lbt, sink],
                          {"service": "benchlbt"}))
    shapes = [(4, 8), (1, 1)]
    rows = scenario_paths(s, paths, shapes, [64])
    s.section(
        "Tracing: spans per call at the proxy and the LB (OTLP/HTTP to a local sink)", PATH_COLUMNS, rows,
        ["tracing off: no otlp_endpoint (the default); on: otlp_endpoint set, trace_sample_ratio 1.0 or 0.01; "
         "every call then carries its trace context to the service (sampled or not), and a sampled one "
         "makes a span, batched and exported on the proxy's own threads",
         "proxy + lb: → rpc-lb → 4 Rust worker processes (pool 4); tracing on at both: the LB exports "
         "its own span per call too",
         "CPU: the proxy (+ the LB), + the OTLP sink (a Python HTTP server that discards what it gets) on tracing rows; "
         "a batch may be exported up to 5 s after its run, so the sink's share is approximate"],
    )
    s.stop(*traced, sink)


def tls_keys(dir):
    """A CA, and certificates it signs for the service (127.0.0.1) and
    the proxy, made with openssl: {"ca", "service", "proxy"} → paths,
    or None without openssl."""
    if shutil.which("openssl") is None:
        return None
    ca_key, ca = os.path.join(dir, "ca.key"), os.path.join(dir, "ca.pem")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=bench CA")
    out = {"ca": ca}
    for who in ("service", "proxy"):
        key, csr, cert = (os.path.join(dir, f"{who}.{ext}") for ext in ("key", "csr", "pem"))
        ext = os.path.join(dir, f"{who}.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
        run("req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN=bench {who}")
        run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "2", "-extfile", ext)
        out[who] = (cert, key)
    return out


def scenario_tls(s, k):
    """The proxy → endpoint hop over TLS (mutual authentication) against
    plain frames: one proxy with TLS keys routes to two Rust bench
    services, one plain and one accepting TLS only."""
    keys = tls_keys(s.tmp)
    if keys is None:
        s.notes.append("TLS rows skipped: no openssl to make certificates with")
        return
    svc, svc_addr = k.service()
    (scert, skey), (pcert, pkey) = keys["service"], keys["proxy"]
    tsvc, tsvc_addr = s.service("service-tls", "benchtls", tls_cert_file=scert, tls_key_file=skey,
                                tls_client_ca_file=keys["ca"])
    p, tcp, _ = s.proxy("proxy-tls", tls_ca_file=keys["ca"], tls_cert_file=pcert, tls_key_file=pkey)
    wait_until("proxy-tls routes to both", lambda: probe(tcp, "bench:echo") and probe(tcp, "benchtls:echo"),
               [svc, tsvc, p])
    paths = [("direct", svc_addr, [svc], {"direct": True}),
             ("proxy → service, plain", tcp, [p, svc], {}),
             ("proxy → service, TLS", tcp, [p, tsvc], {"service": "benchtls"})]
    shapes = [(4, 8), (1, 1)] if s.a.quick else [(4, 8), (16, 16), (1, 1)]
    rows = scenario_paths(s, paths, shapes, [64])
    rows += scenario_paths(s, paths[1:], [(4, 8)], [16 << 10])
    s.section(
        "TLS on the proxy → endpoint hop", PATH_COLUMNS, rows,
        ["one proxy (with tls_ca_file, tls_cert_file, tls_key_file) and two Rust bench services, "
         "one plain, one with tls_cert_file, tls_key_file, tls_client_ca_file (TLS only, mutual "
         "authentication, ECDSA P-256, rustls/ring, TLS 1.3); the client → proxy hop is plain in both",
         "CPU: the proxy + the service; × direct: the plain service called without the proxy"],
    )
    s.stop(p, tsvc)


SCENARIOS = [
    ("paths", "throughput and latency", scenario_paths_main),
    ("payloads", "payload sizes", scenario_payloads),
    ("unix", "TCP vs Unix socket client → proxy", scenario_unix),
    ("idle", "idle connections", scenario_idle),
    ("lb-dispatch", "slow calls among fast ones: LB dispatch", scenario_lb_dispatch),
    ("balance", "one slow endpoint of two: proxy balance", scenario_balance),
    ("python", "Python services", scenario_python),
    ("tracing", "proxy and LB tracing: off, and on at sampling 1.0 and 0.01", scenario_tracing),
    ("tls", "TLS on the proxy → endpoint hop vs plain frames", scenario_tls),
]

PATH_COLUMNS = ["shape", "path", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "× direct", "CPU s / 1M req",
                "RSS KiB idle → load", "client CPU %"]


def run_suite(s):
    k = Components(s)
    only = set(s.a.only or [n for n, _, _ in SCENARIOS])
    for name, title, fn in SCENARIOS:
        if name in only:
            print(title, flush=True)
            fn(s, k)
