#!/usr/bin/env bash
# Where a wsflow echo spends its time per message, and A/B comparisons of
# host builds (docs/BENCHMARKS.md, "Profile").
#
#   bench/profile.sh profile [BIN]      # perf profile of BIN (default: the release
#                                       # build), fresh instances and instance reuse:
#                                       # µs of server CPU per message, by part and
#                                       # by origin (kernel, wasmtime, guest, host crates)
#   bench/profile.sh ab BIN_A BIN_B...  # alternate the binaries, ROUNDS rounds, and
#                                       # print each one's median messages/s and
#                                       # server CPU µs per message
#
# Settings (environment): PROFILE_MODES="fresh reuse", PROFILE_SECONDS=6 (load
# per run; perf records the middle of it), PROFILE_ROUNDS=8 (ab), PROFILE_DURATION=3
# (ab: seconds measured per run), PROFILE_CONNECTIONS=64, PROFILE_KEEP=DIR (profile:
# keep the perf reports there).
#
# Needs `perf` (Debian: linux-perf) for `profile`, and the release binaries and
# echo component that `bench/run.sh` builds (`bench/run.sh` once, or
# `cargo build --release -p wsflow -p wsflow-bench` and
# `cargo build --release --target wasm32-wasip2 -p wsflow-example-echo`).
# The server runs on CPU 0 and the load generator on CPU 1; one CPU's worth
# of server time is split by perf's samples, so a part's share of the
# samples divided by the messages per second is its CPU time per message.
# Run-to-run spread on a shared VM is large (±25%): compare medians of
# alternating runs (`ab`), not single runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WHAT=${1:-profile}
shift || true
MODES=${PROFILE_MODES:-fresh reuse}
SECONDS_PER_RUN=${PROFILE_SECONDS:-6}
ROUNDS=${PROFILE_ROUNDS:-8}
DURATION=${PROFILE_DURATION:-3}
CONNECTIONS=${PROFILE_CONNECTIONS:-64}
LOAD=$TARGET/release/wsflow-load
ECHO=$TARGET/wasm32-wasip2/release/wsflow_example_echo.wasm
for file in "$LOAD" "$ECHO"; do
    [[ -e $file ]] || {
        echo "missing $file (see the comment at the top of $0)" >&2
        exit 1
    }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsflow-profile.XXXXXX")
SERVER_PID=
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for mode in fresh reuse; do
    instance=""
    [[ $mode == reuse ]] && instance='instance = "reuse"'
    cat >"$WORK/$mode.toml" <<EOF
[app]
name = "bench"

[flows.bench]
component = "$ECHO"

[[triggers]]
port = 0

[[triggers.handlers]]
path = "/echo"
mode = "data"
flow = "bench"
$instance
EOF
done

# run BIN MODE SECONDS [PERF_OUTPUT]: serve MODE with BIN on CPU 0, load it
# from CPU 1, optionally record the server with perf in the middle of the
# run; prints the load generator's messages/s.
run() {
    local bin=$1 mode=$2 seconds=$3 record=${4:-}
    taskset -c 0 "$bin" up "$WORK/$mode.toml" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local i url=
    for ((i = 0; i < 100; i++)); do
        url=$(grep -o 'ws://[^ ]*' "$WORK/server.log" | head -1 || true)
        [[ -n $url ]] && break
        sleep 0.1
    done
    [[ -n $url ]] || {
        cat "$WORK/server.log" >&2
        exit 1
    }
    taskset -c 1 "$LOAD" "$url" -c "$CONNECTIONS" -d "$seconds" --warmup 1 >"$WORK/load.out" 2>&1 &
    local load=$!
    local cpu_before cpu_after
    if [[ -n $record ]]; then
        sleep $((1 + seconds / 4))
        perf record -q -F 999 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$record" \
            -- sleep $((seconds / 2)) >/dev/null 2>&1
    else
        # The measured period starts after the load's one-second warm-up.
        sleep 1
        cpu_before=$(cpu_ticks "$SERVER_PID")
    fi
    wait "$load"
    [[ -z $record ]] && cpu_after=$(cpu_ticks "$SERVER_PID")
    kill -INT "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    local rate
    rate=$(grep -o 'msgs_per_s=[0-9]*' "$WORK/load.out" | cut -d= -f2)
    if [[ -n $record ]]; then
        echo "$rate"
    else
        # Server CPU per message over the measured period: robust to other
        # load on the machine, which lowers messages/s but not this.
        awk -v r="$rate" -v d="$seconds" -v t=$((cpu_after - cpu_before)) -v hz="$(getconf CLK_TCK)" \
            'BEGIN { printf "%d %.1f\n", r, t / hz * 1e6 / (r * d) }'
    fi
}

# cpu_ticks PID: the process's user + system CPU time, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# The parts reported, as `label|symbol`: the inclusive share of the first
# symbol of the perf report that is `symbol`, or starts with it when it ends
# in `::` (closures).
PARTS=(
    "the connection's task, all of it|wsflow::trigger::connection::<impl wsflow::trigger::WsTrigger>::upgrade::"
    "  an execution (fresh instance)|wsflow::runtime::FlowPre::execute::"
    "    instantiating the component|wasmtime::runtime::component::instance::InstancePre<T>::instantiate_async::"
    "    a new store and WASI context|wsflow::runtime::FlowPre::new_store"
    "    dropping the store (slot reset)|<wasmtime::runtime::store::Store<T> as core::ops::drop::Drop>::drop"
    "      linear memory reset (pagemap)|wasmtime::runtime::vm::sys::unix::pagemap::reset_with_pagemap"
    "  guest work, metered, on the app's lane|wsflow::runtime::scheduler::polling"
    "    the guest call|wasmtime::runtime::component::func::typed::TypedFunc<Params,Return>::call_impl"
    "      lowering the event|wasmtime::runtime::component::func::typed::TypedFunc<Params,Return>::lower_args"
    "    the thread CPU clock|wsflow::runtime::cpu::thread_cpu_nanos"
    "  tracing spans (new)|tracing::span::Span::new"
    "  writing to the socket (send)|__libc_send"
    "  reading from the socket|<tokio_tungstenite::compat::AllowStd<S> as std::io::Read>::read"
    "malloc|__GI___libc_malloc"
    "free|__GI___libc_free"
)

# share REPORT SYMBOL: see PARTS.
share() {
    awk -v want="$2" '
        {
            line = $0
            share = $1
            sub("%", "", share)
            if (!sub(/^.*\] /, "", line)) next
            sub(/ +(- +-)? *$/, "", line)
            sub(/ \(inlined\)$/, "", line)
            if (line == want || (want ~ /::$/ && index(line, want) == 1)) { print share; exit }
        }' "$1"
}

# origins REPORT RATE: the samples' own time (not their callees') by where
# the code comes from, in µs per message: the kernel, wasmtime, the guest's
# compiled code (symbols perf cannot resolve), the host's crates, libc.
origins() {
    awk -v rate="$2" '
        {
            share = $2
            sub("%", "", share)
            if (share + 0 == 0) next
            line = $0
            sub(/^.*\] /, "", line)
            origin = "other"
            if ($3 == "[k]") origin = "kernel"
            else if (line ~ /wasmtime|cranelift/) origin = "wasmtime"
            else if (line ~ /tungstenite/) origin = "tungstenite"
            else if (line ~ /wsflow/) origin = "wsflow"
            else if (line ~ /tokio/) origin = "tokio"
            else if (line ~ /futures/) origin = "futures"
            else if (line ~ /tracing/) origin = "tracing"
            else if (line ~ /malloc|free|memmove|memset|memcpy|tcache|_int_/) origin = "libc memory"
            else if (line ~ /clock_gettime|vdso/) origin = "clock (vDSO)"
            else if (line ~ /^0x/) origin = "guest code (unresolved)"
            sum[origin] += share
        }
        END {
            for (origin in sum)
                printf "    %-38s %7.2f%% %12.2f\n", origin, sum[origin], sum[origin] / 100 * 1e6 / rate
        }' "$1" | sort -k2 -t'%' -rn
}

profile() {
    local bin=${1:-$TARGET/release/wsflow}
    command -v perf >/dev/null || {
        echo "perf is not installed (Debian: apt-get install linux-perf)" >&2
        exit 1
    }
    echo "profile of $bin, $CONNECTIONS connections, ping-pong, 32 B, server on CPU 0"
    local mode
    for mode in $MODES; do
        local rate
        rate=$(run "$bin" "$mode" "$SECONDS_PER_RUN" "$WORK/$mode.data")
        perf report -i "$WORK/$mode.data" --children --sort symbol --stdio -g none 2>/dev/null |
            grep '%' >"$WORK/$mode.report"
        if [[ -n ${PROFILE_KEEP:-} ]]; then
            mkdir -p "$PROFILE_KEEP"
            cp "$WORK/$mode.report" "$PROFILE_KEEP/$mode.report"
        fi
        echo
        echo "$mode instances: $rate messages/s, $(awk -v r="$rate" 'BEGIN { printf "%.1f", 1e6 / r }') µs of server CPU per message"
        printf '  %-40s %8s %12s\n' part share "µs/message"
        local part label pattern share
        for part in "${PARTS[@]}"; do
            label=${part%%|*}
            pattern=${part#*|}
            share=$(share "$WORK/$mode.report" "$pattern")
            [[ -n $share ]] || continue
            printf '  %-40s %7s%% %12s\n' "$label" "$share" \
                "$(awk -v s="$share" -v r="$rate" 'BEGIN { printf "%.2f", s / 100 * 1e6 / r }')"
        done
        echo "  by origin (own time of the code):"
        origins "$WORK/$mode.report" "$rate"

    done
}

ab() {
    (($# >= 2)) || {
        echo "usage: $0 ab BIN_A BIN_B..." >&2
        exit 2
    }
    local bins=("$@") n=$# round i mode
    for mode in $MODES; do
        for ((round = 0; round < ROUNDS; round++)); do
            # Rotate the order every round: drift in the machine's speed
            # falls on every binary alike.
            for ((i = 0; i < n; i++)); do
                local index=$(((i + round) % n))
                run "${bins[$index]}" "$mode" "$DURATION" >>"$WORK/ab.$mode.$index"
            done
        done
        for ((i = 0; i < n; i++)); do
            local cpus
            cpus=$(sort -n -k2 "$WORK/ab.$mode.$i" | awk '{ printf " %s", $2 }')
            sort -n "$WORK/ab.$mode.$i" | awk -v bin="${bins[$i]}" -v mode="$mode" -v cpus="$cpus" '
                { rate[NR] = $1 }
                END {
                    n = split(cpus, cpu, " ")
                    printf "%-6s %-40s median %7d msgs/s %6.1f µs CPU/msg   runs", mode, bin,
                        rate[int((NR + 1) / 2)], cpu[int((n + 1) / 2)]
                    for (j = 1; j <= NR; j++) printf " %d", rate[j]
                    printf "   µs CPU/msg%s\n", cpus
                }'
        done
    done
}

case $WHAT in
profile) profile "$@" ;;
ab) ab "$@" ;;
*)
    echo "usage: $0 profile [BIN] | ab BIN_A BIN_B..." >&2
    exit 2
    ;;
esac
