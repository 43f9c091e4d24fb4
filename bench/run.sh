#!/usr/bin/env bash
# Build, start a throw-away warren daemon, run bench_core against it, stop the daemon, clean up.
#
#   bash bench/run.sh [bench_core args...]      e.g.  bash bench/run.sh --rounds 100 --json
#
# Environment: BUILD (default build), BWRAP (default /usr/bin/bwrap), KEEP_LOG=1 keeps the daemon log.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BWRAP=${BWRAP:-/usr/bin/bwrap}

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: the daemon needs root" >&2
    exit 1
fi

make --no-print-directory BUILD="$BUILD" all "$BUILD/bench/bench_core" >&2

# A free port: let the kernel pick one, then release it for the daemon.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
STATE=$(mktemp -d /tmp/warren-bench.XXXXXX)
LOG="$STATE.log"
DPID=

cleanup() {
    if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
        kill -TERM "$DPID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$DPID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$DPID" 2>/dev/null; then
            echo "bench/run.sh: daemon did not stop on SIGTERM, killing" >&2
            kill -KILL "$DPID" 2>/dev/null || true
        fi
        wait "$DPID" 2>/dev/null || true
    fi
    rm -rf "$STATE"
    if [ "${KEEP_LOG:-0}" = 1 ]; then
        echo "bench/run.sh: daemon log kept in $LOG" >&2
    else
        rm -f "$LOG"
    fi
}
trap cleanup EXIT INT TERM

# Throw-away state: its sandboxes are stopped with the daemon (they would outlive it otherwise).
"./$BUILD/warren" serve --listen "127.0.0.1:$PORT" --state-dir "$STATE" --stop-sandboxes-on-exit \
    >"$LOG" 2>&1 &
DPID=$!

for _ in $(seq 100); do
    if python3 - "$PORT" <<'EOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1).read()
EOF
    if ! kill -0 "$DPID" 2>/dev/null; then
        echo "bench/run.sh: daemon exited during start-up:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done

echo "bench/run.sh: daemon pid $DPID on 127.0.0.1:$PORT, state $STATE" >&2
"./$BUILD/bench/bench_core" --url "http://127.0.0.1:$PORT" --bwrap "$BWRAP" "$@"
