#!/usr/bin/env bash
# The Debian package, built, installed and used as an operator would:
#   1. builds it with cargo-deb (installed first if missing);
#   2. installs it with dpkg -i;
#   3. checks the binaries run from /usr/bin, the rpc_proxy user, the work
#      directory, the conffiles, and the systemd units (systemd-analyze
#      verify; systemd itself need not run);
#   4. starts rpc-proxy with the unit's own command line, user and
#      environment (the packaged config, the embedded registry), checks it
#      listens, answers a call and that `rpcctl list` reads the registry;
#   5. runs the unit's ExecReload= command as systemd would (a zero-drop
#      upgrade: a new process takes over, the pid file names it, a client
#      connection opened before is answered after), for the proxy and for
#      an LB started from the packaged example;
#   6. stops them with SIGTERM, as systemd does, within TimeoutStopSec=;
#   7. removes the package (dpkg -r: conffiles stay), purges it (dpkg -P),
#      and deletes the user if this run created it.
# Run as root (it installs a package and creates a user), on a machine
# where rpc-proxy is not installed and ports 5550 and 5555 are free. Ends
# with a summary and a count line (`package: N passed, M failed`); exits
# non-zero when a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "package-test: run as root: it installs a Debian package" >&2
    exit 1
fi

PKG=rpc-proxy
USER_NAME=rpc_proxy
WORK=/var/lib/rpc_proxy
UNITS=/lib/systemd/system
started_at=$SECONDS
passed=0
failed=0
failures=()
pids=()
installed=0
user_existed=0
units_load_existed=0
[ -e /run/systemd/systemd-units-load ] && units_load_existed=1
scratch=$(mktemp -d)
chmod 755 "$scratch"

ok() { passed=$((passed + 1)); echo "  ok   $1"; }
bad() { failed=$((failed + 1)); failures+=("$1"); echo "  FAIL $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@" >"$scratch/out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/       /' "$scratch/out" | tail -20; fi
}
summary() {
    local secs=$((SECONDS - started_at))
    if [ "$failed" = 0 ]; then
        echo "package-test: PASS: $passed checks, ${deb_name:-no package} built, installed, served, reloaded, removed (${secs}s)"
    else
        echo "package-test: FAIL: $failed of $((passed + failed)) checks failed: ${failures[*]} (${secs}s)"
    fi
    # The line scripts/test.sh counts.
    echo "package: $passed passed, $failed failed"
}

cleanup() {
    local rc=$? p f
    # The servers this run started, and any the upgrade helper started that
    # a pid file still names.
    for f in /run/rpc-proxy/rpc-proxy.pid /run/rpc-lb/echo/rpc-lb.pid; do
        [ -f "$f" ] && pids+=("$(cat "$f")")
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf /run/rpc-proxy /run/rpc-lb/echo
    rmdir /run/rpc-lb 2>/dev/null || true
    # systemd-analyze leaves this mark where no systemd runs.
    [ "$units_load_existed" = 1 ] || rm -f /run/systemd/systemd-units-load
    if [ "$installed" = 1 ]; then
        rm -f /etc/rpc_proxy/lb/echo.ini
        dpkg -P "$PKG" >/dev/null 2>&1 || true
    fi
    if [ "$user_existed" = 0 ] && getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME" 2>/dev/null || true
        groupdel "$USER_NAME" 2>/dev/null || true
    fi
    if [ "$failed" != 0 ] || [ "$rc" != 0 ]; then
        for f in proxy lb reload; do
            [ -s "$scratch/$f.log" ] || continue
            echo "--- $f.log (last 30 lines)"
            tail -30 "$scratch/$f.log"
        done
    fi
    rm -rf "$scratch"
    if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
        failures+=("aborted (exit $rc)"); failed=1
    fi
    summary
    [ "$failed" = 0 ] || exit 1
}
trap cleanup EXIT

if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'ok installed'; then
    echo "package-test: $PKG is installed on this machine already; refusing to replace it" >&2
    exit 1
fi
getent passwd "$USER_NAME" >/dev/null && user_existed=1

echo "==> tools"
if ! cargo deb --version >/dev/null 2>&1; then
    echo "    installing cargo-deb"
    cargo install cargo-deb --locked
fi
if ! command -v systemd-analyze >/dev/null; then
    echo "    installing systemd (for systemd-analyze; it does not run)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
fi
for port in 5550 5555; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "package-test: port $port (of the packaged configs) is taken on this machine" >&2
        exit 1
    fi
done

echo "==> building the package"
# By default with the package's own metadata and assets but binaries built
# quickly (a profile defined here: release without optimisation, LTO or debug
# info), since the release build takes several minutes on two cores.
# PACKAGE_TEST_PROFILE=release builds exactly what `cargo deb -p rpc-proxy`
# ships.
profile=${PACKAGE_TEST_PROFILE:-pkgtest}
if [ "$profile" = pkgtest ]; then
    export CARGO_PROFILE_PKGTEST_INHERITS=release CARGO_PROFILE_PKGTEST_OPT_LEVEL=0 \
        CARGO_PROFILE_PKGTEST_LTO=false CARGO_PROFILE_PKGTEST_CODEGEN_UNITS=16 \
        CARGO_PROFILE_PKGTEST_DEBUG=false
fi
cargo deb -p "$PKG" --locked --profile "$profile" --output "$scratch/" 2>&1 | tail -3
deb=$(ls "$scratch"/*.deb)
deb_name=$(basename "$deb")
version=$(dpkg-deb -f "$deb" Version)
echo "    $deb_name ($(du -h "$deb" | cut -f1))"
check "package holds the binaries, units, helper and configs" bash -c "
    dpkg-deb -c '$deb' | awk '{print \$6}' >'$scratch/contents'
    for f in ./usr/bin/rpc-proxy ./usr/bin/rpc-lb ./usr/bin/rpcctl \
        .$UNITS/rpc-proxy.service .$UNITS/rpc-lb@.service ./usr/libexec/rpc-proxy/upgrade \
        ./etc/rpc_proxy/proxy.ini ./etc/rpc_proxy/lb/echo.ini.example; do
        grep -qx \"\$f\" '$scratch/contents' || { echo \"missing \$f\"; exit 1; }
    done"

echo "==> installing"
dpkg -i "$deb"
installed=1
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
check "rpc-proxy --version from /usr/bin" bash -c "/usr/bin/rpc-proxy --version | grep -qx 'rpc-proxy $cargo_version'"
check "rpc-lb --version from /usr/bin" bash -c "/usr/bin/rpc-lb --version | grep -qx 'rpc-lb $cargo_version'"
check "rpcctl --help from /usr/bin" bash -c "/usr/bin/rpcctl --help | grep -q '^Usage: rpcctl'"
check "system user and group $USER_NAME" bash -c "
    uid=\$(id -u $USER_NAME) && [ \"\$uid\" -lt 1000 ] && getent group $USER_NAME >/dev/null"
check "work directory $WORK owned by $USER_NAME" bash -c "[ \"\$(stat -c %U:%G $WORK)\" = $USER_NAME:$USER_NAME ]"
check "configs are conffiles" bash -c "
    c=\$(dpkg-query -W -f='\${Conffiles}' $PKG)
    grep -q ' /etc/rpc_proxy/proxy.ini ' <<<\"\$c \" && grep -q ' /etc/rpc_proxy/lb/echo.ini.example ' <<<\"\$c \""
check "version $version installed" bash -c "[ \"\$(dpkg-query -W -f='\${Version}' $PKG)\" = '$version' ]"

echo "==> systemd units"
check "systemd-analyze verify rpc-proxy.service" systemd-analyze verify "$UNITS/rpc-proxy.service"
check "systemd-analyze verify rpc-lb@echo.service" systemd-analyze verify "$UNITS/rpc-lb@.service:rpc-lb@echo.service"

# A unit's setting, with %i as instance $2 (systemd's own expansion is not
# needed: the units use no other specifier).
unit_value() { # unit_value UNIT INSTANCE KEY
    sed -n "s/^$3=//p" "$UNITS/$1" | sed "s/%i/$2/g"
}
unit_env() { # KEY=VALUE words of Environment=
    unit_value "$1" "$2" Environment
}
# Runs COMMAND as the unit would: its user, its environment, its work dir
# created by StateDirectory= (postinst made it), its RuntimeDirectory=.
as_unit() { # as_unit UNIT INSTANCE COMMAND...
    local unit=$1 instance=$2; shift 2
    local rundir
    rundir=/run/$(unit_value "$unit" "$instance" RuntimeDirectory)
    install -d -o "$USER_NAME" -g "$USER_NAME" -m 0755 "$rundir"
    # shellcheck disable=SC2046 # Environment= words, split as systemd does
    setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups \
        env $(unit_env "$unit" "$instance") "$@" 5>&-
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # wait_port PORT SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
    return 1
}
alive() { [ -d "/proc/$1" ] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
wait_gone() { # wait_gone PID SECONDS
    local i
    for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done
    return 1
}
# Stops PID as systemd would (SIGTERM, TimeoutStopSec= of UNIT).
stop_as_unit() { # stop_as_unit UNIT PID
    local limit
    limit=$(unit_value "$1" x TimeoutStopSec)
    kill -TERM "$2" && wait_gone "$2" "${limit:-90}"
}

echo "==> rpc-proxy from /usr/bin, as rpc-proxy.service runs it"
proxy_port=$(sed -n 's/^proxy_address *= *[0-9.]*:\([0-9]*\).*/\1/p' /etc/rpc_proxy/proxy.ini)
read -r -a start_cmd <<<"$(unit_value rpc-proxy.service x ExecStart)"
as_unit rpc-proxy.service x "${start_cmd[@]}" >"$scratch/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
check "proxy listens on 127.0.0.1:$proxy_port" wait_port "$proxy_port" 30
check "rpcctl -c /etc/rpc_proxy/proxy.ini list reads the embedded registry" bash -c "
    /usr/bin/rpcctl -c /etc/rpc_proxy/proxy.ini list --json | tee /dev/stderr |
        grep -q '\"registry\": \"local:$WORK/registry\"'"
# No endpoint is registered: the proxy answers with an exception, which
# shows it reads and answers framed Thrift.
check "proxy answers a call (no endpoint: an exception)" bash -c "
    out=\$(/usr/bin/rpcctl -c /etc/rpc_proxy/proxy.ini call --json --thrift examples/thrift/echo.thrift \
        echo echo '{\"message\": \"hi\"}' 2>&1 || true)
    echo \"\$out\"; grep -q TApplicationException <<<\"\$out\""

# One call on the client connection kept on fd 5: `echo:echo` with seqid
# $1, no arguments. No endpoint serves it, so the answer is an exception;
# it must carry the seqid.
call_on_kept_connection() { # call_on_kept_connection SEQID
    local seq=$1 len body n got
    printf '\x00\x00\x00\x16\x80\x01\x00\x01\x00\x00\x00\x09echo:echo\x00\x00\x00'"\\x$(printf %02x "$seq")"'\x00' >&5
    len=$(timeout 20 dd bs=4 count=1 iflag=fullblock <&5 2>/dev/null | od -An -tu1 |
        awk '{print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4}')
    [ -n "$len" ] && [ "$len" -gt 8 ] || { echo "no answer on the kept connection"; return 1; }
    body=$(timeout 20 dd bs="$len" count=1 iflag=fullblock <&5 2>/dev/null | od -An -tx1 | tr -d ' \n')
    n=$((16#${body:8:8}))
    got=$((16#${body:$((16 + 2 * n)):8}))
    [ "$got" = "$seq" ] || { echo "answer with seqid $got, expected $seq: $body"; return 1; }
}

# ExecReload=, with $MAINPID as systemd sets it.
reload() { # reload UNIT INSTANCE MAINPID -> the new main pid on stdout
    local unit=$1 instance=$2 main=$3 pidfile
    local -a cmd
    read -r -a cmd <<<"$(unit_value "$unit" "$instance" ExecReload | sed "s/\$MAINPID/$main/")"
    pidfile=$(unit_value "$unit" "$instance" PIDFile)
    as_unit "$unit" "$instance" RPC_UPGRADE_TIMEOUT=90 "${cmd[@]}" >>"$scratch/reload.log" 2>&1 || {
        cat "$scratch/reload.log" >&2
        return 1
    }
    local new
    new=$(cat "$pidfile")
    [ "$new" != "$main" ] && alive "$new" && ! alive "$main" || {
        echo "pid file $pidfile: $new; old $main alive: $(alive "$main" && echo yes || echo no)" >&2
        return 1
    }
    echo "$new"
}

echo "==> systemctl reload rpc-proxy (ExecReload=), as systemd runs it"
exec 5<>"/dev/tcp/127.0.0.1/$proxy_port"
check "a client connection is answered before the reload" call_on_kept_connection 1
if new=$(reload rpc-proxy.service x "$proxy"); then
    ok "reload: a new proxy (pid $new) took over from pid $proxy, named in PIDFile="
    pids+=("$new")
    check "the same client connection is answered after it (handed over)" call_on_kept_connection 2
    check "the new proxy listens on 127.0.0.1:$proxy_port" wait_port "$proxy_port" 5
    check "the new proxy answers a call" bash -c "
        /usr/bin/rpcctl -c /etc/rpc_proxy/proxy.ini call --json --thrift examples/thrift/echo.thrift \
            echo echo '{\"message\": \"hi\"}' 2>&1 | grep -q TApplicationException"
    proxy=$new
else
    bad "reload of rpc-proxy"
fi
exec 5>&-

echo "==> rpc-lb@echo from /usr/bin, with the packaged example"
cp /etc/rpc_proxy/lb/echo.ini.example /etc/rpc_proxy/lb/echo.ini
lb_port=$(sed -n 's/^front_port *= *//p' /etc/rpc_proxy/lb/echo.ini)
read -r -a lb_cmd <<<"$(unit_value rpc-lb@.service echo ExecStart)"
as_unit rpc-lb@.service echo "${lb_cmd[@]}" >"$scratch/lb.log" 2>&1 &
lb=$!
pids+=("$lb")
check "LB listens on 127.0.0.1:$lb_port" wait_port "$lb_port" 30
check "LB's back_address socket is in the work directory" bash -c "
    [ -S \"\$(sed -n 's/^back_address *= *//p' /etc/rpc_proxy/lb/echo.ini)\" ]"
if new=$(reload rpc-lb@.service echo "$lb"); then
    ok "reload: a new LB (pid $new) took over from pid $lb, named in PIDFile="
    pids+=("$new")
    check "the new LB listens on 127.0.0.1:$lb_port" wait_port "$lb_port" 5
    lb=$new
else
    bad "reload of rpc-lb@echo"
fi

echo "==> stopping (SIGTERM, within TimeoutStopSec=)"
check "LB stops gracefully" stop_as_unit rpc-lb@.service "$lb"
check "proxy stops gracefully" stop_as_unit rpc-proxy.service "$proxy"
rm -f /etc/rpc_proxy/lb/echo.ini

echo "==> removing"
dpkg -r "$PKG"
check "dpkg -r removes binaries, units and helper" bash -c "
    for f in /usr/bin/rpc-proxy /usr/bin/rpc-lb /usr/bin/rpcctl $UNITS/rpc-proxy.service \
        $UNITS/rpc-lb@.service /usr/libexec/rpc-proxy/upgrade; do
        [ ! -e \"\$f\" ] || { echo \"still there: \$f\"; exit 1; }
    done"
check "dpkg -r keeps the conffiles" test -f /etc/rpc_proxy/proxy.ini
dpkg -P "$PKG"
installed=0
check "dpkg -P removes configs and the work directory" bash -c "[ ! -e /etc/rpc_proxy ] && [ ! -e $WORK ]"
check "dpkg -P leaves no trace in dpkg" bash -c "! dpkg-query -W -f='\${Status}' $PKG 2>/dev/null | grep -q installed"
