#!/bin/sh
# Builds go/vendor from Debian's Go library packages (golang-thrift-dev,
# golang-github-samuel-go-zookeeper-dev) so that `go build -mod=vendor`
# works offline. Outside Debian, skip this and let `go mod tidy` fetch the
# versions go.mod names.
set -eu
cd "$(dirname "$0")"
GOCODE=${GOCODE:-/usr/share/gocode/src}
thrift_src=$GOCODE/github.com/apache/thrift/lib/go/thrift
zk_src=$GOCODE/github.com/samuel/go-zookeeper/zk
for d in "$thrift_src" "$zk_src"; do
	[ -d "$d" ] || { echo "vendor.sh: $d missing (install golang-thrift-dev golang-github-samuel-go-zookeeper-dev)" >&2; exit 1; }
done
rm -rf vendor
copy() { # src dst: the package's Go sources, without its tests
	mkdir -p "$2"
	for f in "$1"/*.go; do
		case "$f" in *_test.go) ;; *) cp "$f" "$2/" ;; esac
	done
}
copy "$thrift_src" vendor/github.com/apache/thrift/lib/go/thrift
copy "$zk_src" vendor/github.com/samuel/go-zookeeper/zk
# Versions must match go.mod's require block.
cat > vendor/modules.txt <<'MOD'
# github.com/apache/thrift v0.17.0
## explicit; go 1.18
github.com/apache/thrift/lib/go/thrift
# github.com/samuel/go-zookeeper v0.0.0-20180130194729-c4fab1a1d004
## explicit
github.com/samuel/go-zookeeper/zk
MOD
