#!/bin/sh
# Builds and tests the Go SDK offline, against a throwaway ZooKeeper and the
# real rpc-proxy ($RPC_BIN_DIR, default target/debug of the repository).
# Installs Debian's Go toolchain and libraries and ZooKeeper when missing.
# Ends with one line, `go: N passed, M failed`, and exits non-zero if
# anything failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

need=""
command -v go >/dev/null 2>&1 || need="$need golang-go"
[ -d /usr/share/gocode/src/github.com/apache/thrift/lib/go/thrift ] || need="$need golang-thrift-dev"
[ -d /usr/share/gocode/src/github.com/samuel/go-zookeeper/zk ] || need="$need golang-github-samuel-go-zookeeper-dev"
[ -f /usr/share/java/zookeeper.jar ] || need="$need zookeeper"
command -v java >/dev/null 2>&1 || need="$need default-jre-headless"
if [ -n "$need" ]; then
	echo "go/test.sh: installing$need"
	apt_install() {
		apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $need >/dev/null
	}
	# shellcheck disable=SC2086
	if ! apt_install; then
		apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null && apt_install || {
			echo "go/test.sh: cannot install$need" >&2
			echo "go: 0 passed, 1 failed"
			exit 1
		}
	fi
fi

RPC_BIN_DIR=${RPC_BIN_DIR:-$repo/target/debug}
case "$RPC_BIN_DIR" in /*) ;; *) RPC_BIN_DIR=$(pwd)/$RPC_BIN_DIR ;; esac
export RPC_BIN_DIR
if [ ! -x "$RPC_BIN_DIR/rpc-proxy" ]; then
	echo "go/test.sh: $RPC_BIN_DIR/rpc-proxy is missing: run 'cargo build -p rpc-proxy --bin rpc-proxy' or set RPC_BIN_DIR" >&2
	echo "go: 0 passed, 1 failed"
	exit 1
fi

cd "$here" || exit 1
# Offline: the libraries come from Debian's packages, vendored.
export GO111MODULE=on GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local
# Go keeps its build cache under $HOME; give it one where there is none.
if [ -z "${HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then
	export GOCACHE="${TMPDIR:-/tmp}/go-build-cache" GOPATH="${TMPDIR:-/tmp}/go-path"
fi
if ! ./vendor.sh; then
	echo "go: 0 passed, 1 failed"
	exit 1
fi

failed=0
if ! nice -n 19 go build ./...; then
	echo "go/test.sh: go build failed" >&2
	failed=$((failed + 1))
fi
unformatted=$(gofmt -l rpcsdk itest examples gen)
if [ -n "$unformatted" ]; then
	echo "go/test.sh: not gofmt-clean: $unformatted" >&2
	failed=$((failed + 1))
fi
if ! nice -n 19 go vet ./...; then
	echo "go/test.sh: go vet failed" >&2
	failed=$((failed + 1))
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
nice -n 19 go test -count=1 -timeout 240s -v ./... 2>&1 | tee "$log"
status=$(grep -c '^FAIL' "$log")
passed=$(grep -cE '^[[:space:]]*--- PASS:' "$log")
tests_failed=$(grep -cE '^[[:space:]]*--- FAIL:' "$log")
failed=$((failed + tests_failed))
# A package that failed outside any test (build error, TestMain, timeout).
if [ "$status" -gt 0 ] && [ "$tests_failed" -eq 0 ]; then
	failed=$((failed + 1))
fi
echo "go: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
