#!/usr/bin/env bash
# Mixed-fleet tests: stock Go, Java and Python Thrift clients call, through
# the real rpc-proxy, a Java SDK service, a Go SDK service, a Rust SDK
# service, rpc_thrift workers behind rpc-lb and endpoints registered with
# the original system's JSON, all in one product of a throwaway ZooKeeper.
#
#   tests/mixed/run.sh              # build what is missing, run every test
#   tests/mixed/run.sh -k matrix    # extra arguments go to pytest
#
# Needs rpc-proxy, rpc-lb and rpc-demo in $RPC_BIN_DIR (default target/debug),
# and Debian's JDK, libthrift-java, Curator, ZooKeeper, Go with
# golang-thrift-dev and golang-github-samuel-go-zookeeper-dev, thrift-compiler
# (java/test.sh and go/test.sh install them); Python's thrift and pytest.
# Reuses java/build when it is current and Go's build cache. Ends with one
# line, `mixed: N passed, M failed`, and exits non-zero if anything failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$here/build
bin_dir=${RPC_BIN_DIR:-$repo/target/debug}
case "$bin_dir" in /*) ;; *) bin_dir=$(pwd)/$bin_dir ;; esac
export RPC_BIN_DIR=$bin_dir

die() {
    echo "tests/mixed/run.sh: $*" >&2
    echo "mixed: 0 passed, 1 failed"
    exit 1
}

for b in rpc-proxy rpc-lb rpc-demo; do
    [ -x "$bin_dir/$b" ] || die "$b not found in $bin_dir (cargo build -p rpc-proxy -p rpc-lb -p rpc-demo, or set RPC_BIN_DIR)"
done
for f in /usr/bin/javac /usr/bin/thrift /usr/share/java/thrift.jar /usr/share/java/curator-framework.jar \
         /usr/share/java/zookeeper.jar /usr/share/gocode/src/github.com/apache/thrift/lib/go/thrift \
         /usr/share/gocode/src/github.com/samuel/go-zookeeper/zk; do
    [ -e "$f" ] || die "$f missing: run java/test.sh and go/test.sh once (they install Debian's packages)"
done
command -v go >/dev/null || die "go missing (Debian golang-go)"
python3 -c 'import thrift, pytest' 2>/dev/null || die "Python thrift and pytest are needed (python3 -m pip install thrift pytest)"
mkdir -p "$build"

# -- Java: the SDK and its Echo test service (java/build when current), and
#    the stock client.
jars=(thrift curator-framework curator-client zookeeper zookeeper-jute slf4j-api guava)
cp_libs=$(printf '/usr/share/java/%s.jar:' "${jars[@]}")/usr/share/java/slf4j-nop.jar
jbuild=$build/java
newest_source=$(find "$repo/java/src" "$repo/examples/thrift/echo.thrift" -type f -newer "$repo/java/build/rpc-proxy-sdk.jar" 2>/dev/null | head -1)
if [ -f "$repo/java/build/rpc-proxy-sdk.jar" ] && [ -f "$repo/java/build/classes/test/rpcproxy/sdk/EchoServer.class" ] \
        && [ -z "$newest_source" ] && [ "$repo/java/build/rpc-proxy-sdk.jar" -nt "$jbuild/rpc-proxy-sdk.jar" ]; then
    rm -rf "$jbuild" && mkdir -p "$jbuild/classes"
    cp "$repo/java/build/rpc-proxy-sdk.jar" "$jbuild/" && cp -r "$repo/java/build/classes/test" "$jbuild/classes/" \
        || die "cannot copy java/build"
elif [ ! -f "$jbuild/rpc-proxy-sdk.jar" ] || [ -n "$(find "$repo/java/src" "$repo/examples/thrift/echo.thrift" -type f -newer "$jbuild/rpc-proxy-sdk.jar" | head -1)" ]; then
    echo "tests/mixed/run.sh: building the Java SDK" >&2
    rm -rf "$jbuild" && mkdir -p "$jbuild/classes/main" "$jbuild/classes/test" "$jbuild/gen-java"
    { echo 'namespace java rpcproxy.echo'; cat "$repo/examples/thrift/echo.thrift"; } > "$jbuild/echo.thrift"
    nice -n 19 thrift --gen java:generated_annotations=suppress -out "$jbuild/gen-java" "$jbuild/echo.thrift" \
        || die "thrift --gen java failed"
    nice -n 19 javac -nowarn -XDignore.symbol.file -encoding UTF-8 --release 17 -d "$jbuild/classes/main" \
        -cp "$cp_libs" $(find "$repo/java/src/main/java" -name '*.java') 2>"$jbuild/javac.log" \
        || { cat "$jbuild/javac.log" >&2; die "the Java SDK does not compile"; }
    (cd "$jbuild/classes/main" && jar cf "$jbuild/rpc-proxy-sdk.jar" .) || die "jar failed"
    nice -n 19 javac -nowarn -encoding UTF-8 --release 17 -d "$jbuild/classes/test" \
        -cp "$jbuild/rpc-proxy-sdk.jar:$cp_libs" $(find "$jbuild/gen-java" -name '*.java') \
        "$repo/java/src/test/java/rpcproxy/sdk/EchoServer.java" "$repo/java/src/test/java/rpcproxy/sdk/EchoHandler.java" \
        2>"$jbuild/javac.log" || { cat "$jbuild/javac.log" >&2; die "the Java Echo service does not compile"; }
fi
if [ ! -f "$jbuild/client/MixedClient.class" ] || [ "$here/java/MixedClient.java" -nt "$jbuild/client/MixedClient.class" ] \
        || [ "$jbuild/rpc-proxy-sdk.jar" -nt "$jbuild/client/MixedClient.class" ]; then
    mkdir -p "$jbuild/client"
    nice -n 19 javac -encoding UTF-8 --release 17 -d "$jbuild/client" -cp "$jbuild/classes/test:$cp_libs" \
        "$here/java/MixedClient.java" || die "MixedClient does not compile"
fi
export MIXED_JAVA_CP=$jbuild/client:$jbuild/classes/test:$jbuild/rpc-proxy-sdk.jar:$cp_libs

# -- Go: the SDK's echo-service and the stock client, offline against
#    Debian's libraries (go/vendor.sh), with Go's build cache.
export GO111MODULE=on GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local
if [ -z "${HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then
    export GOCACHE="${TMPDIR:-/tmp}/go-build-cache" GOPATH="${TMPDIR:-/tmp}/go-path"
fi
[ -f "$repo/go/vendor/modules.txt" ] || (cd "$repo/go" && ./vendor.sh) || die "go/vendor.sh failed"
(cd "$repo/go" && nice -n 19 go build -o "$build/echo-service" ./examples/echo-service) \
    || die "go build echo-service failed"
gv=$here/goclient/vendor
rm -rf "$gv" && mkdir -p "$gv/rpcproxy/go/gen"
cp -r "$repo/go/vendor/github.com" "$gv/" && cp -r "$repo/go/gen/echo" "$gv/rpcproxy/go/gen/" \
    || die "cannot assemble goclient/vendor"
{ cat "$repo/go/vendor/modules.txt"
  echo '# rpcproxy/go v0.0.0 => ../../../go'
  echo '## explicit; go 1.19'
  echo 'rpcproxy/go/gen/echo'
  echo '# rpcproxy/go => ../../../go'; } > "$gv/modules.txt"
(cd "$here/goclient" && nice -n 19 go build -o "$build/mixedgo" .) || die "go build mixedgo failed"

# -- the tests
export MIXED_BUILD=$build
report=$build/report.xml
rm -f "$report"
cd "$here" || die "no $here"
timeout -k 10 600 nice -n 19 python3 -m pytest -p no:cacheprovider -q -rfE --junitxml="$report" "$@"
rc=$?
[ -f "$report" ] || die "pytest wrote no report (exit $rc)"
python3 - "$report" "$rc" <<'EOF'
import re, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cells, passed, failed = {}, 0, 0
for case in root.iter("testcase"):
    bad = case.find("failure") is not None or case.find("error") is not None
    skipped = case.find("skipped") is not None
    if bad:
        failed += 1
    elif not skipped:
        passed += 1
    m = re.fullmatch(r"test_matrix\[(\w+)-(\w+)\]", case.get("name", ""))
    if m:
        cells[(m.group(1), m.group(2))] = "FAIL" if bad else ("skip" if skipped else "pass")
if cells:
    clients = sorted({c for c, _ in cells})
    columns = list(dict.fromkeys(s for _, s in cells))
    print("client \\ service".ljust(18) + "".join(s.ljust(19) for s in columns))
    for c in clients:
        print(c.ljust(18) + "".join(cells.get((c, s), "-").ljust(19) for s in columns))
if failed == 0 and int(sys.argv[2]) != 0:
    failed = 1  # pytest failed outside any test
print(f"mixed: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
