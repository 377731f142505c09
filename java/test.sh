#!/usr/bin/env bash
# Builds the Java SDK offline from Debian's packages (javac + jar, no
# network) and runs its tests against a real ZooKeeper and the real
# rpc-proxy. Ends with one line: `java: N passed, M failed`.
#
#   java/test.sh                      # every test
#   java/test.sh rpcproxy.sdk.StopTest  # one class (or Class#method)
#
# RPC_BIN_DIR: where rpc-proxy is (default: target/debug of the repo).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin_dir=${RPC_BIN_DIR:-$repo/target/debug}
build=$here/build

die() {
    echo "java/test.sh: $*" >&2
    echo "java: 0 passed, 1 failed"
    exit 1
}

# Debian's packages: the compiler, Thrift, Curator, ZooKeeper (client and
# the server the tests start), JUnit 4, and an slf4j binding for the logs.
packages=(default-jdk-headless thrift-compiler libthrift-java libcurator-framework-java
          libcurator-client-java libzookeeper-java junit4 libslf4j-java)
needed=(/usr/bin/javac /usr/bin/thrift /usr/share/java/thrift.jar /usr/share/java/curator-framework.jar
        /usr/share/java/curator-client.jar /usr/share/java/zookeeper.jar /usr/share/java/junit4.jar
        /usr/share/java/slf4j-jdk14.jar)
missing=0
for f in "${needed[@]}"; do [ -e "$f" ] || missing=1; done
if [ "$missing" = 1 ]; then
    echo "java/test.sh: installing ${packages[*]}" >&2
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=600 "${packages[@]}" >&2
    }
    apt_install || { apt-get update -q -o DPkg::Lock::Timeout=600 >&2 && apt_install; } \
        || die "could not install ${packages[*]}"
fi

[ -x "$bin_dir/rpc-proxy" ] || die "rpc-proxy not found in $bin_dir (cargo build -p rpc-proxy --bin rpc-proxy, or set RPC_BIN_DIR)"

jars=(thrift curator-framework curator-client zookeeper zookeeper-jute slf4j-api guava)
cp_main=$(printf '/usr/share/java/%s.jar:' "${jars[@]}")
cp_test=$cp_main/usr/share/java/junit4.jar:/usr/share/java/hamcrest.jar:/usr/share/java/slf4j-jdk14.jar

rm -rf "$build"
mkdir -p "$build/classes/main" "$build/classes/test" "$build/gen-java"
javac_() { nice -n 19 javac -nowarn -XDignore.symbol.file -encoding UTF-8 --release 17 "$@" 2>&1 \
    | grep -v -e 'internal proprietary API' -e '^Note: ' -e 'sun.misc.Signal' -e '^\s*\^' -e '^[0-9]* warnings\?$' -e 'bad path element' >&2
    return "${PIPESTATUS[0]}"; }

# The example service's IDL with a Java package of its own.
{ echo 'namespace java rpcproxy.echo'; cat "$repo/examples/thrift/echo.thrift"; } > "$build/echo.thrift"
nice -n 19 thrift --gen java:generated_annotations=suppress -out "$build/gen-java" "$build/echo.thrift" \
    || die "thrift code generation failed"
javac_ -d "$build/classes/main" -cp "$cp_main" $(find "$here/src/main/java" -name '*.java') \
    || die "the SDK does not compile"
(cd "$build/classes/main" && jar cf "$build/rpc-proxy-sdk.jar" .) || die "jar failed"
javac_ -d "$build/classes/test" -cp "$build/rpc-proxy-sdk.jar:$cp_test" \
    $(find "$here/src/test/java" "$build/gen-java" -name '*.java') \
    || die "the tests do not compile"

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(rpcproxy.sdk.ConfigTest rpcproxy.sdk.EndpointTest rpcproxy.sdk.WireTest
           rpcproxy.sdk.ProxyTest rpcproxy.sdk.RegistryTest rpcproxy.sdk.ClientTest rpcproxy.sdk.StopTest
           rpcproxy.sdk.SessionExpiryTest rpcproxy.sdk.ZkAuthTest rpcproxy.sdk.LocalRegistryTest)
fi
cd "$build" || die "no build directory"
RPC_BIN_DIR=$bin_dir timeout -k 10 600 nice -n 19 java -XX:TieredStopAtLevel=1 \
    -Drpc.repo="$repo" -Drpc.test.log="$build/java-tests.log" \
    -cp "$build/classes/test:$build/rpc-proxy-sdk.jar:$cp_test" \
    rpcproxy.sdk.TestMain "${tests[@]}"
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    die "the tests did not finish within 600 s"
fi
exit $rc
