#!/usr/bin/env bash
# Fuzz every libFuzzer target (fuzz/fuzz_*.c), one after the other, for SECONDS each, and print
# one summary line per target.
#
#   bash bench/fuzz.sh SECONDS [TARGET...]      e.g.  bash bench/fuzz.sh 1800 http ws
#
# Each target starts from a scratch copy of its committed corpus (fuzz/corpus/NAME), so what the
# fuzzer generates is never added to the tree; a crash, leak or timeout stops that target and its
# input is kept in the work directory, whose path is printed. Targets run under `nice -n 15`.
# Environment: RUNS stops a target after that many executions too (default: no limit);
# FUZZ_ARGS adds libFuzzer options; KEEP=1 keeps the work directory even when all went well;
# BIN_DIR runs the targets found there instead of building build-fuzz/fuzz (e.g. copies, so that
# rebuilding during a long run does not touch the binaries it runs).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_EACH=${1:?usage: bench/fuzz.sh SECONDS [TARGET...]}
shift
if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in fuzz/fuzz_*.c; do
        n=${f#fuzz/fuzz_}
        TARGETS+=("${n%.c}")
    done
fi

if [ -z "${BIN_DIR:-}" ]; then
    make --no-print-directory fuzz >&2
fi
BIN_DIR=${BIN_DIR:-build-fuzz/fuzz}
WORK=$(mktemp -d /tmp/warren-fuzz-run.XXXXXX)
failed=0

# Inputs larger than these rarely add coverage and slow every execution down.
max_len() {
    case "$1" in
    archive) echo 65536 ;;
    files) echo 1024 ;;
    *) echo 4096 ;;
    esac
}

printf '%-10s %12s %8s %9s %7s %8s %8s  %s\n' target execs seconds exec/s cov ft corpus result
for t in "${TARGETS[@]}"; do
    bin=$BIN_DIR/fuzz_$t
    [ -x "$bin" ] || { echo "bench/fuzz.sh: no target $t" >&2; exit 2; }
    mkdir -p "$WORK/$t/corpus"
    cp fuzz/corpus/"$t"/* "$WORK/$t/corpus/"
    dict=()
    [ -f "fuzz/$t.dict" ] && dict=("-dict=fuzz/$t.dict")
    start=$(date +%s)
    rc=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    nice -n 15 "$bin" -max_total_time="$SECONDS_EACH" -runs="${RUNS:--1}" \
        -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$WORK/$t/" "${dict[@]}" ${FUZZ_ARGS:-} "$WORK/$t/corpus" \
        >"$WORK/$t/log" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t/log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$WORK/$t/log")
    last=$(grep -E '^#[0-9]+' "$WORK/$t/log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    result=ok
    if [ "$rc" != 0 ]; then
        result="FAILED (exit $rc): $(ls "$WORK/$t" | grep -E '^(crash|leak|timeout|oom)-' || true)"
        failed=1
    fi
    printf '%-10s %12s %8s %9s %7s %8s %8s  %s\n' "$t" "${execs:-?}" "$secs" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done

if [ "$failed" = 1 ] || [ "${KEEP:-0}" = 1 ]; then
    echo "bench/fuzz.sh: logs, corpora and findings in $WORK" >&2
else
    rm -rf "$WORK"
fi
exit "$failed"
