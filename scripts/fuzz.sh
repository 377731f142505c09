#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer); the targets are in fuzz/fuzz_targets.
#
#   scripts/fuzz.sh smoke                    every target briefly (CI), after
#                                            replaying fuzz/regressions
#   scripts/fuzz.sh long [SECONDS] [TARGET...]  long runs (default 3600 s each,
#                                            every target), one after another
#   scripts/fuzz.sh build | list
#
# The toolchain is stable: cargo fuzz needs nightly-only compiler flags
# (-Zsanitizer, the sanitizer-coverage passes), which stable rustc accepts
# with RUSTC_BOOTSTRAP=1. That is set here for the fuzz build only.
#
# New inputs found go to fuzz/target/corpus/TARGET (not committed); the
# committed seeds in fuzz/corpus/TARGET are read, never written. Crashes
# land in fuzz/artifacts/TARGET. Builds and runs are niced.
#
# Environment: FUZZ_SMOKE_SECONDS (20), FUZZ_JOBS (1), FUZZ_SANITIZER
# (none for smoke, address for long runs), FUZZ_CODEGEN_UNITS (16 for
# smoke: a faster build; 1 for long runs).
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
NICE=(nice -n 19)
TARGETS=(frame_decoder header control endpoint_json config_ini proxy_client)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    "${NICE[@]}" cargo install --locked cargo-fuzz --version 0.13.2
fi

mode=${1:-smoke}
shift || true

# Smoke builds (other flags) keep a target directory of their own, so
# that switching between smoke and long runs rebuilds nothing.
tdir() { # sanitizer codegen-units
    echo "fuzz/target/$1-cgu$2"
}

build() { # sanitizer codegen-units
    "${NICE[@]}" cargo fuzz build -O -s "$1" --codegen-units "$2" --fuzz-dir fuzz \
        --target-dir "$(tdir "$1" "$2")"
}

# run TARGET SANITIZER CGU LIBFUZZER-ARGS... : one run, seeds included.
run() {
    local t=$1 san=$2 cgu=$3
    shift 3
    mkdir -p "fuzz/target/corpus/$t" "fuzz/corpus/$t"
    "${NICE[@]}" cargo fuzz run -O -s "$san" --codegen-units "$cgu" --fuzz-dir fuzz \
        --target-dir "$(tdir "$san" "$cgu")" "$t" \
        "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
}

# Replays the reproducers of crashes found and fixed.
replay() { # TARGET SANITIZER CGU
    local dir="fuzz/regressions/$1"
    [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] || return 0
    "${NICE[@]}" cargo fuzz run -O -s "$2" --codegen-units "$3" --fuzz-dir fuzz \
        --target-dir "$(tdir "$2" "$3")" "$1" \
        "$dir"/* -- -runs=1
}

case "$mode" in
list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
build)
    build "${FUZZ_SANITIZER:-address}" "${FUZZ_CODEGEN_UNITS:-1}"
    ;;
smoke)
    secs=${FUZZ_SMOKE_SECONDS:-20}
    san=${FUZZ_SANITIZER:-none}
    cgu=${FUZZ_CODEGEN_UNITS:-16}
    log=$(mktemp -d)
    trap 'rm -rf "$log"' EXIT
    start=$(date +%s)
    echo "==> building the fuzz targets"
    build "$san" "$cgu"
    passed=0 failed=0
    for t in "${TARGETS[@]}"; do
        echo "==> $t: regressions, then ${secs}s"
        if replay "$t" "$san" "$cgu" >"$log/$t.replay" 2>&1 &&
            run "$t" "$san" "$cgu" -max_total_time="$secs" >"$log/$t.log" 2>&1; then
            passed=$((passed + 1))
            grep -h '^Done' "$log/$t.log" || true
        else
            failed=$((failed + 1))
            echo "FAILED: $t"
            tail -n 40 "$log/$t.replay" "$log/$t.log" 2>/dev/null || true
        fi
    done
    echo "smoke took $(($(date +%s) - start))s"
    echo "fuzz: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    ;;
long)
    secs=3600
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then
        secs=$1
        shift
    fi
    [ $# -gt 0 ] || set -- "${TARGETS[@]}"
    san=${FUZZ_SANITIZER:-address}
    cgu=${FUZZ_CODEGEN_UNITS:-1}
    jobs=${FUZZ_JOBS:-1}
    parallel=()
    [ "$jobs" -le 1 ] || parallel=(-jobs="$jobs" -workers="$jobs")
    mkdir -p fuzz/target/logs
    build "$san" "$cgu"
    rc=0
    for t in "$@"; do
        log="fuzz/target/logs/$t-$(date +%Y%m%d-%H%M%S).log"
        echo "==> $t for ${secs}s ($log)"
        if ! run "$t" "$san" "$cgu" -max_total_time="$secs" "${parallel[@]}" \
            >"$log" 2>&1; then
            echo "FAILED: $t (see $log and fuzz/artifacts/$t)"
            rc=1
        fi
        grep -h '^Done\|stat::number_of_executed_units\|stat::peak_rss_mb' "$log" || true
    done
    exit $rc
    ;;
*)
    echo "usage: $0 smoke | long [SECONDS] [TARGET...] | build | list" >&2
    exit 2
    ;;
esac
