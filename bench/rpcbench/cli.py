"""Benchmark suite: every path side by side, in one run, on loopback.

Builds release binaries, starts the components itself (benchmark service,
rpc-proxy, rpc-lb with worker processes, HAProxy in TCP mode) around an
embedded local registry in a temporary directory (or ZooKeeper with --zk),
drives them with rpc-bench, and writes bench/results/<date>-<commit>.md and
.json. Fails only when a reply is wrong or lost or a component does not
start; timings are reported, never asserted.

    bench/run                 # full suite (about 15 minutes)
    bench/run --quick         # smoke run (< 2 minutes), what CI runs
    bench/run --bin-dir DIR   # DIR/rpc-proxy and DIR/rpc-lb instead of ours
"""

import argparse
import datetime
import os
import resource
import shutil
import subprocess
import sys

from .procs import ROOT, ComponentError
from .report import write_results
from .scenarios import SCENARIOS, run_suite
from .suite import Suite


def build(a):
    pkgs = ["-p", "rpc-bench"]
    profile = [] if a.debug else ["--release"]
    if not a.bin_dir:
        pkgs += ["-p", "rpc-proxy"]
        if os.path.exists(os.path.join(ROOT, "crates", "lb", "Cargo.toml")):
            pkgs += ["-p", "rpc-lb"]
    print("building: cargo build " + " ".join(profile + pkgs), flush=True)
    if subprocess.run(["cargo", "build", "-q"] + profile + pkgs, cwd=ROOT).returncode != 0:
        sys.exit("bench/run: build failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (CI)")
    ap.add_argument("--zk", metavar="HOSTS", help="use this ZooKeeper instead of the embedded local registry")
    ap.add_argument("--bin-dir", metavar="DIR", help="take rpc-proxy and rpc-lb from DIR")
    ap.add_argument("--python-worker", metavar="CMD",
                    help="command starting one Python bench worker; {config}, {back} and {pool} are substituted "
                         "(default: python -m rpc_sdk.bench_worker when the Python SDK has it)")
    ap.add_argument("--only", action="append", choices=[n for n, _, _ in SCENARIOS],
                    help="run only this scenario (repeatable)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--debug", action="store_true",
                    help="debug binaries (target/debug): a functional smoke run without a release build; numbers mean little")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results directory")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (full suite)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run (full suite)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the main table (full suite)")
    ap.add_argument("--client-threads", type=int, default=1, help="rpc-bench runtime threads")
    ap.add_argument("--proxy-threads", type=int, default=0, help="rpc-proxy `threads` (0: the default choice)")
    ap.add_argument("--lb-threads", type=int, default=0, help="rpc-lb `threads` (0: the default choice)")
    a = ap.parse_args()
    argv = ["bench/run"] + sys.argv[1:]

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    rel = os.path.join(target, "debug" if a.debug else "release")
    if not a.no_build:
        build(a)
    a.bench_bin = os.path.join(rel, "rpc-bench")
    a.server_bin = os.path.join(rel, "rpc-bench-server")
    bins = a.bin_dir or rel
    a.proxy_bin = os.path.join(bins, "rpc-proxy")
    a.lb_bin = os.path.join(bins, "rpc-lb")
    for b in [a.bench_bin, a.server_bin, a.proxy_bin]:
        if not os.access(b, os.X_OK):
            sys.exit(f"bench/run: missing binary {b}")
    if not os.access(a.lb_bin, os.X_OK):
        a.lb_bin = None
    if a.python_worker is None and os.path.exists(os.path.join(ROOT, "python", "rpc_sdk", "bench_worker.py")):
        a.python_worker = sys.executable + " -m rpc_sdk.bench_worker -c {config} --back-address {back} --pool-size {pool}"

    # Thousands of idle connections need descriptors in every process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    started = datetime.datetime.now()
    s = Suite(a)
    print(f"bench/run: {'quick' if a.quick else 'full'} suite, work dir {s.tmp}", flush=True)
    component_failed = False
    try:
        run_suite(s)
    except ComponentError as e:
        component_failed = True
        s.failures.append(f"component failure: {e}")
        print(f"bench/run: {e}", file=sys.stderr, flush=True)
    except subprocess.TimeoutExpired as e:
        component_failed = True
        s.failures.append(f"run did not finish: {e}")
    finally:
        s.stop_all()
    base = write_results(s, started, argv)
    elapsed = (datetime.datetime.now() - started).total_seconds()
    print(f"\nresults: {base}.md and .json ({elapsed:.0f} s)")
    with open(base + ".md") as f:
        print(f.read())
    if s.failures or component_failed:
        print(f"bench/run: FAILED ({len(s.failures)} problem(s)); logs kept in {s.logdir}", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(s.tmp, ignore_errors=True)


