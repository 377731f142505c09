#!/usr/bin/env bash
# Fault scenarios under continuous load, one table: a process killed, a
# stalled peer (SIGSTOP), rolling restarts, a ZooKeeper outage, garbage
# input, slowloris, a stalled LB worker, a proxy upgrade. Every component
# is real and on loopback (ZooKeeper from Debian's package).
#   scripts/faults.sh                  # every scenario, release binaries (built first)
#   scripts/faults.sh --quick --debug  # the CI subset on debug binaries
#   scripts/faults.sh --duration 60 --rate 5000 --only sigstop
# Ends with `faults: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
debug=0
for a in "$@"; do [ "$a" = --debug ] && debug=1; done
if [ "$debug" = 1 ]; then
    cargo build -q -p rpc-proxy -p rpc-lb -p rpc-bench
else
    cargo build -q --release -p rpc-proxy -p rpc-lb -p rpc-bench
fi
cd bench
exec python3 -m rpcbench.faults "$@"
