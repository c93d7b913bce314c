#!/usr/bin/env bash
# Two applications (each with a distributor inside) and three nodes connected to both.
#
#   bash examples/two_distributors_three_nodes/run.sh      (from any directory)
#
# 1. starts app.py (distributor on $APP_PORT, default 5100) and app2.py ($APP2_PORT, 5101) and
#    waits until both distributors listen;
# 2. starts the three nodes (`python -m jobreactor node --config nodeN.toml`) in the background,
#    pointing them at those two ports;
# 3. waits for both apps: each exits once all its jobs' feedbacks came back (or after 45 s);
# 4. stops the nodes with SIGTERM and exits with status 0 if both apps succeeded, else 1.
# Node logs go to a temporary directory, printed (and kept) only if something failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
APP_PORT="${APP_PORT:-5100}"
APP2_PORT="${APP2_PORT:-5101}"
WAIT_S="${WAIT_S:-45}"       # each app waits at most this long for its feedbacks

cd "$HERE"                   # the tomls' job_directory = "jobs" is relative to here
# Works from a source checkout without `pip install -e .` too.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# Every node dials both distributors (overrides `distributors` in the tomls).
export JOBREACTOR_DISTRIBUTORS="[\"127.0.0.1:$APP_PORT\", \"127.0.0.1:$APP2_PORT\"]"

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/jobreactor-example.XXXXXX")"
APP_PIDS=()
NODE_PIDS=()
REDIS_PID=""

# Nodes 2 and 3 keep their jobs in Redis, as in the Ruby example: a private redis-server on a
# free port, gone at exit. Without redis-server they fall back to memory storage.
if command -v redis-server >/dev/null 2>&1; then
    REDIS_PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$LOGS" >"$LOGS/redis.log" 2>&1 &
    REDIS_PID=$!
    export JOBREACTOR_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    for _ in $(seq 100); do
        "$PYTHON" -c "import redis,sys; redis.Redis(port=$REDIS_PORT).ping()" 2>/dev/null && break
        sleep 0.1
    done
    echo "run.sh: redis-server on port $REDIS_PORT for the redis nodes"
else
    echo "run.sh: redis-server not found; nodes 2 and 3 use memory storage instead"
    export JOBREACTOR_STORAGE=memory
fi

stop_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Graceful stop takes well under a second here; SIGKILL whatever is left after 10 s.
    for _ in $(seq 100); do
        local alive=0
        for pid in "${NODE_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${NODE_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}

cleanup() {
    local pid
    for pid in "${APP_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    stop_nodes
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_line() {  # wait_for_line FILE TEXT PID: until FILE contains TEXT (at most 10 s)
    for _ in $(seq 100); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    echo "run.sh: gave up waiting for '$2' in $1:" >&2
    cat "$1" >&2
    return 1
}

# 1. The applications first: their distributors must listen before the nodes dial in.
"$PYTHON" app.py "$APP_PORT" --timeout "$WAIT_S" >"$LOGS/app.out" 2>&1 &
APP_PIDS+=($!)
"$PYTHON" app2.py "$APP2_PORT" --timeout "$WAIT_S" >"$LOGS/app2.out" 2>&1 &
APP_PIDS+=($!)
wait_for_line "$LOGS/app.out" "distributor listening" "${APP_PIDS[0]}"
wait_for_line "$LOGS/app2.out" "distributor listening" "${APP_PIDS[1]}"
echo "run.sh: distributors listen on $APP_PORT and $APP2_PORT; starting 3 nodes"

# 2. The nodes.
for n in 1 2 3; do
    "$PYTHON" -m jobreactor node --config "node$n.toml" >"$LOGS/node$n.log" 2>&1 &
    NODE_PIDS+=($!)
    echo "run.sh: node$n.toml ($(grep -m1 '^name' "node$n.toml" | cut -d'"' -f2)) has pid $!"
done

# 3. Wait for both applications.
status=0
wait "${APP_PIDS[0]}" || status=1
wait "${APP_PIDS[1]}" || status=1
APP_PIDS=()
cat "$LOGS/app.out" "$LOGS/app2.out"

# 4. Stop the nodes.
stop_nodes
if [ "$status" = 0 ]; then
    rm -rf "$LOGS"
    echo "run.sh: OK"
else
    echo "run.sh: FAILED; node logs kept in $LOGS" >&2
    tail -n 20 "$LOGS"/node*.log >&2
fi
exit "$status"
