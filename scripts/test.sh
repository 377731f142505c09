#!/usr/bin/env bash
# Installs what the tests need (ZooKeeper, the Thrift compiler, HAProxy and
# Chromium from Debian; the Python SDK and its test tools from PyPI), then runs every
# test: the Rust workspace, the Python SDK, a smoke run of the benchmark and,
# as root, the Debian package's build-install-run-remove test.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v thrift >/dev/null || need_apt+=(thrift-compiler)
command -v haproxy >/dev/null || need_apt+=(haproxy)
[ -e /usr/share/zookeeper ] || need_apt+=(zookeeper)
command -v java >/dev/null || need_apt+=(default-jre-headless)
# The dashboard's browser test drives headless Chromium through WebDriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> installing ${need_apt[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

echo "==> installing the Python SDK and test tools"
python3 -m pip install -q --disable-pip-version-check thrift pytest
if [ -f python/pyproject.toml ]; then
    python3 -m pip install -q --disable-pip-version-check ./python
fi

# A clean run writes about 5 GiB (Rust, fuzz, Go and Java builds); say so
# up front instead of failing mid-build with "No space left on device".
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free here; a clean test run needs about 8 GiB" >&2
fi

echo "==> building"
cargo build --workspace --all-targets

log=$(mktemp -d)
rust_rc=0
echo "==> Rust tests"
# Strict: a test whose real component (browser, ZooKeeper) is missing fails
# instead of skipping.
export RPC_TESTS_STRICT=1
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$log/rust.txt" || rust_rc=$?
else
    cargo test --workspace --no-fail-fast 2>&1 | tee "$log/rust.txt" || rust_rc=$?
fi

# The binaries the Python, Go and Java tests run.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export RPC_BIN_DIR="$target_dir/debug"

py_rc=0
if [ -d python/tests ]; then
    echo "==> Python tests"
    RPC_TESTS_STRICT=1 \
        python3 -m pytest -q python/tests 2>&1 | tee "$log/py.txt" || py_rc=$?
    [ "$py_rc" = 5 ] && py_rc=0 # no tests collected is not a failure of the code
fi

bench_rc=0
if [ -x bench/run ]; then
    echo "==> benchmark smoke run"
    # Debug binaries are already built: a correctness smoke run, no timings.
    bench/run --quick --debug --out "$log/bench" 2>&1 | tee "$log/bench.txt" || bench_rc=$?
fi

# Suites of their own, each ending with a line `NAME: N passed, M failed`.
extra_pass=0; extra_fail=0; extra_lines=()
suite() { # suite NAME COMMAND...
    local name=$1; shift
    echo "==> $name"
    local rc=0
    "$@" 2>&1 | tee "$log/$name.txt" || rc=$?
    local line
    line=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed" "$log/$name.txt" | tail -1 || true)
    local p f
    p=$(sed -n 's/.*: \([0-9]\+\) passed.*/\1/p' <<<"$line")
    f=$(sed -n 's/.* \([0-9]\+\) failed.*/\1/p' <<<"$line")
    if [ -z "$line" ]; then p=0; f=1; line="$name: no summary (exit $rc)"; fi
    if [ "$rc" != 0 ] && [ "${f:-0}" = 0 ]; then f=1; fi
    extra_pass=$((extra_pass + ${p:-0})); extra_fail=$((extra_fail + ${f:-0}))
    extra_lines+=("$line")
}

# Fault scenarios under load (a bounded subset: a process killed, a stalled
# endpoint, a ZooKeeper outage, a stalled LB worker).
if [ -x scripts/faults.sh ]; then
    suite faults bash scripts/faults.sh --quick --debug
fi

# Every fuzz target briefly, after replaying the crashes found before
# (long runs: scripts/fuzz.sh long).
if [ -x scripts/fuzz.sh ]; then
    FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-10} suite fuzz bash scripts/fuzz.sh smoke
fi

# The Go SDK, against a throwaway ZooKeeper and the real rpc-proxy.
if [ -x go/test.sh ]; then
    suite go sh go/test.sh
fi

# The Java SDK, built offline from Debian's packages, against a throwaway
# ZooKeeper and the real rpc-proxy.
if [ -x java/test.sh ]; then
    suite java bash java/test.sh
fi

# One product mixing every implementation: stock Go, Java and Python clients
# × Java, Go and Rust services, Python workers behind rpc-lb, and
# registry records written as the original's components wrote them.
if [ -x tests/mixed/run.sh ]; then
    suite mixed bash tests/mixed/run.sh
fi

# The Debian package, built, installed, run as its units would and removed
# (it needs root: it installs a package and creates a user).
if [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null; then
    suite package bash scripts/package-test.sh
fi

# One closing line over every runner.
rust_pass=0; rust_fail=0; py_pass=0; py_fail=0
if grep -q "tests run:" "$log/rust.txt"; then
    line=$(grep "tests run:" "$log/rust.txt" | tail -1)
    rust_pass=$(sed -n 's/.* \([0-9]\+\) passed.*/\1/p' <<<"$line")
    rust_fail=$(sed -n 's/.* \([0-9]\+\) failed.*/\1/p' <<<"$line")
else
    rust_pass=$({ grep -o '[0-9]\+ passed' "$log/rust.txt" || true; } | awk '{s+=$1} END {print s+0}')
    rust_fail=$({ grep -o '[0-9]\+ failed' "$log/rust.txt" || true; } | awk '{s+=$1} END {print s+0}')
fi
if [ -f "$log/py.txt" ]; then
    py_pass=$(tail -1 "$log/py.txt" | { grep -o '[0-9]\+ passed' || true; } | awk '{s+=$1} END {print s+0}')
    py_fail=$(tail -1 "$log/py.txt" | { grep -o '[0-9]\+ \(failed\|error\)' || true; } | awk '{s+=$1} END {print s+0}')
fi
passed=$(( ${rust_pass:-0} + ${py_pass:-0} + extra_pass ))
failed=$(( ${rust_fail:-0} + ${py_fail:-0} + extra_fail ))
if [ "$bench_rc" != 0 ]; then echo "benchmark smoke run failed (exit $bench_rc)"; failed=$((failed + 1)); fi
if [ "$rust_rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$py_rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
for line in "${extra_lines[@]}"; do echo "$line"; done
echo "rust: ${rust_pass:-0} passed, ${rust_fail:-0} failed; python: ${py_pass:-0} passed, ${py_fail:-0} failed"
echo "total: $passed passed, $failed failed"
[ "$failed" = 0 ]
