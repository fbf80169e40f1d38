#!/usr/bin/env bash
# Runs the sxds benchmark scenarios with the load generator
# (examples/loadgen) and prints a Markdown table of the results.
#
#   scripts/bench.sh                      # everything, ADS, the issue's sizes
#   SCENARIOS="idle fanout" scripts/bench.sh
#   SERVICE=separate FANOUT_STREAMS=2000 scripts/bench.sh
#   PROTOCOLS="sotw delta" SCENARIOS="idle fanout" scripts/bench.sh   # both, same rows
#   PROTOCOL=delta scripts/bench.sh                                    # delta only
#   SCENARIOS=cloud-map scripts/bench.sh                               # Cloud Map on moto, 500 × 20, 10,000 streams
#   CLOUD_MAP_SOURCES=50 CLOUD_MAP_INSTANCES=5 CLOUD_MAP_STREAMS=200 SCENARIOS=cloud-map scripts/bench.sh
#   SCENARIOS="scale full-push fanout fanout-polled" scripts/bench.sh  # the scenarios of issue #12
#   SCALE_LEVELS=1000,2000 FULL_PUSH_STREAMS=2000 FANOUT_STREAMS=2000 SCENARIOS="scale full-push fanout-polled" scripts/bench.sh
#   SCENARIOS=wire-floor scripts/bench.sh                              # the wire's share of an update, without sxds
#
# Scenarios: idle, fanout, ingest, burst, memory (the default list), and
# replicas, cloud-map, scale (RSS per stream and fan-out updates at each of
# $SCALE_LEVELS on one daemon, connecting from the local addresses
# $SCALE_SOURCE_ADDRS: one loopback address pair has ~28,000 ephemeral
# ports), full-push (every cluster and the listener change per update) and
# fanout-polled (fanout while GET /nodes and /metrics are read every
# $POLL_STATUS_MS ms; beside fanout, "with" and "without" polling are two
# rows of one table), and wire-floor (examples/wire_floor.rs, no daemon:
# what one response and its ACK per stream cost in the kernel and tokio
# alone, at $FANOUT_STREAMS streams, shaped as an everyday update and as a
# full push). $SOURCE_ADDRS, if set, is passed to the other scenarios that
# open streams.
#
# Every scenario but memory (which opens no streams) runs once per protocol
# in $PROTOCOLS (sotw, delta; default sotw); delta results are kept as
# <scenario>-delta.json and their rows are marked (delta).
#
# Each scenario starts its own daemon (target/release/sxds) on free loopback
# ports with a temporary data directory. Raw JSON summaries are kept in
# $OUT (default target/bench/<timestamp>/). Needs: cargo, jq (and flock,
# with $CARGO_LOCK); cloud-map
# (not in the default list: filling moto takes minutes) also needs
# moto_server (pip install 'moto[server]==5.2.5'), which it starts itself.
set -euo pipefail

cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"idle fanout ingest burst memory"}
SERVICE=${SERVICE:-ads}
PROTOCOLS=${PROTOCOLS:-${PROTOCOL:-sotw}}
IDLE_LEVELS=${IDLE_LEVELS:-1000,5000,10000}
FANOUT_STREAMS=${FANOUT_STREAMS:-10000}
FANOUT_UPDATES=${FANOUT_UPDATES:-5}
INGEST_STREAMS=${INGEST_STREAMS:-10}
BURST_STREAMS=${BURST_STREAMS:-1000}
FULL_PUSH_STREAMS=${FULL_PUSH_STREAMS:-$FANOUT_STREAMS}
FULL_PUSH_UPDATES=${FULL_PUSH_UPDATES:-$FANOUT_UPDATES}
POLL_STATUS_MS=${POLL_STATUS_MS:-100}
SCALE_LEVELS=${SCALE_LEVELS:-5000,10000,19900}
SCALE_UPDATES=${SCALE_UPDATES:-3}
SCALE_SOURCE_ADDRS=${SCALE_SOURCE_ADDRS:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}
SOURCE_ADDRS=${SOURCE_ADDRS:-}
CLOUD_MAP_SOURCES=${CLOUD_MAP_SOURCES:-500}
CLOUD_MAP_INSTANCES=${CLOUD_MAP_INSTANCES:-20}
CLOUD_MAP_STREAMS=${CLOUD_MAP_STREAMS:-10000}
# The daemon's defaults: what the calls per minute are stated for.
CLOUD_MAP_INTERVAL=${CLOUD_MAP_INTERVAL:-5}
CLOUD_MAP_REFRESH=${CLOUD_MAP_REFRESH:-30}
CLOUD_MAP_STEADY_SECS=${CLOUD_MAP_STEADY_SECS:-60}
OUT=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}

command -v jq >/dev/null || { echo "bench.sh needs jq" >&2; exit 1; }
mkdir -p "$OUT"

# What is measured: the commit, and whether the tree had local changes, when built.
REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock build.rs 2>/dev/null || echo '+dirty')"
echo "building (release) ..." >&2
# On a shared machine, CARGO_LOCK names a lock file that every cargo command takes.
if [[ -n ${CARGO_LOCK:-} ]]; then
    flock "$CARGO_LOCK" cargo build --release --quiet --bin sxds --example loadgen --example wire_floor
else
    cargo build --release --quiet --bin sxds --example loadgen --example wire_floor
fi
# Private copies: a rebuild of target/ during the run must not change the
# binaries under test (or their symbols, for a profiler) halfway.
mkdir -p "$OUT/bin"
cp target/release/sxds target/release/examples/loadgen target/release/examples/wire_floor "$OUT/bin/"
LOADGEN=$OUT/bin/loadgen
SXDS=$OUT/bin/sxds

run() { # name, protocol, loadgen args...
    local name=$1 protocol=$2; shift 2
    [[ $protocol == sotw ]] || name=$name-$protocol
    echo "== $name: loadgen $* (load average before: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    echo "$name $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/loadavg"
    # A bounded run: a wedged scenario must not hang the bench, and a failed
    # one must not hide the others.
    if timeout 900 "$LOADGEN" --sxds "$SXDS" --service "$SERVICE" --protocol "$protocol" "$@" | tee "$OUT/$name.txt" >&2; then
        tail -n 1 "$OUT/$name.txt" > "$OUT/$name.json"
    else
        echo "== $name FAILED (see $OUT/$name.txt)" >&2
        FAILED="$FAILED $name"
    fi
}
FAILED=
wire_floor() { # name, wire_floor args...
    local name=$1; shift
    echo "== $name: wire_floor $*" >&2
    if ! timeout 600 "$OUT/bin/wire_floor" --streams "$FANOUT_STREAMS" "$@" | tee "$OUT/$name.txt" >&2; then
        echo "== $name FAILED (see $OUT/$name.txt)" >&2
        FAILED="$FAILED $name"
    fi
}
# --source-addrs for the scenarios that open streams, if $SOURCE_ADDRS names some.
sources=()
[[ -z $SOURCE_ADDRS ]] || sources=(--source-addrs "$SOURCE_ADDRS")

for protocol in $PROTOCOLS; do
    case $protocol in sotw | delta) ;; *) echo "unknown protocol $protocol (sotw, delta)" >&2; exit 2 ;; esac
done
for protocol in $PROTOCOLS; do
    for scenario in $SCENARIOS; do
        case $scenario in
            idle) run idle "$protocol" --scenario idle --streams "$IDLE_LEVELS" "${sources[@]}" ;;
            fanout) run fanout "$protocol" --scenario fanout --streams "$FANOUT_STREAMS" --updates "$FANOUT_UPDATES" "${sources[@]}" ;;
            fanout-polled) run fanout-polled "$protocol" --scenario fanout --streams "$FANOUT_STREAMS" --updates "$FANOUT_UPDATES" \
                --poll-status-ms "$POLL_STATUS_MS" "${sources[@]}" ;;
            full-push) run full-push "$protocol" --scenario full-push --streams "$FULL_PUSH_STREAMS" --updates "$FULL_PUSH_UPDATES" "${sources[@]}" ;;
            scale) run scale "$protocol" --scenario scale --streams "$SCALE_LEVELS" --updates "$SCALE_UPDATES" --source-addrs "$SCALE_SOURCE_ADDRS" ;;
            ingest) run ingest "$protocol" --scenario ingest --streams "$INGEST_STREAMS" "${sources[@]}" ;;
            burst) run burst "$protocol" --scenario burst --streams "$BURST_STREAMS" "${sources[@]}" ;;
            # No streams: the same for every protocol, so measured once.
            memory) [[ -f $OUT/memory.txt ]] || run memory sotw --scenario memory ;;
            # Three replicas on the etcd that SXDS_STORE names; needs an sxds built
            # with --features etcd (SXDS_STORE=etcd://... SCENARIOS=replicas scripts/bench.sh).
            replicas) run replicas "$protocol" --scenario replicas --replicas 3 --streams 9000 --updates 5 ;;
            cloud-map) run cloud-map "$protocol" --scenario cloud-map --sources "$CLOUD_MAP_SOURCES" --instances "$CLOUD_MAP_INSTANCES" \
                --streams "$CLOUD_MAP_STREAMS" --cloud-map-interval "$CLOUD_MAP_INTERVAL" --cloud-map-refresh "$CLOUD_MAP_REFRESH" \
                --steady-secs "$CLOUD_MAP_STEADY_SECS" --updates 3 ;;
            # No daemon, no protocol: measured once.
            wire-floor) if [[ ! -f $OUT/wire-floor.txt ]]; then
                    wire_floor wire-floor --rounds 10
                    wire_floor wire-floor-full-push --rounds 5 --exchanges 4 --response-bytes 4000 --ack-bytes 800
                    wire_floor wire-floor-full-push-paired --rounds 5 --exchanges 2 --batch 2 --response-bytes 4000 --ack-bytes 800
                fi ;;
            *) echo "unknown scenario $scenario" >&2; exit 2 ;;
        esac
    done
done

kib() { jq -r "$1 | if . == null then \"-\" else (. / 1024 * 10 | round / 10 | tostring) + \" KiB\" end" "$2"; }
msf() { jq -r "$1 | if . == null then \"-\" else (. | round | tostring) + \" ms\" end" "$2"; }
median() { jq -r "[$1] | sort | if length == 0 then \"-\" else .[length/2|floor] | round | tostring end" "$2"; }

fanout_rows() { # file, label
    local f=$1 label=$2 n
    n=$(jq -r .streams "$f")
    echo "| $label, $n streams, 1 of $(jq -r .clusters "$f") endpoint sets changed | convergence p50 / p99 / max (worst of $(jq '.updates | length' "$f") updates) | $(msf .worst.p50_ms "$f") / $(msf .worst.p99_ms "$f") / $(msf .worst.max_ms "$f") | p99 ≤ 1 s |"
    echo "| | never converged (all updates) | $(jq -r .worst.never "$f") | 0 |"
    echo "| | PUT answered (median) / daemon CPU per update (median) | $(jq -r '[.updates[].put_ms] | sort | .[length/2|floor] | round' "$f") ms / $(jq -r '[.updates[].daemon_cpu_ms] | sort | .[length/2|floor]' "$f") ms | no more on delta than on SotW |"
    echo "| | resources per EDS response (mean, max) / EDS responses per stream (mean, max), all updates | $(jq -r 'def r2: if . == null then "-" else (. * 100 | round / 100 | tostring) end; def worst(k): map(.[k] // empty) | max | r2;
        [.updates[].eds_responses] | "\(worst("resources_per_response_mean")), \(worst("resources_per_response_max")) / \(worst("responses_per_stream_mean")), \(worst("responses_per_stream_max"))"' "$f") | 1, 1 / 1, 1 |"
}

# Status reads of a polled run: rounds, and per path reads (failed), p50 / max.
status_rows() { # file
    jq -r 'select(.status_reads != null) | .status_reads | "| | status reads every \(.pause_ms | round) ms during the updates: \(.polls) rounds; GET /nodes, GET /metrics reads (failed), p50 / max | \(."/nodes" | "\(.reads) (\(.failed)), \(.p50_ms * 10 | round / 10) / \(.max_ms | round) ms"); \(."/metrics" | "\(.reads) (\(.failed)), \(.p50_ms * 10 | round / 10) / \(.max_ms | round) ms") | every read answered |"' "$1"
}

echo
echo "sxds benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $REV, $(nproc) cores, $(uname -r), service=$SERVICE, protocols=${PROTOCOLS// /+}"
echo
echo "Load average (1/5/15 min) when each scenario started — other work on the machine shows here: $(awk '{printf "%s%s %s/%s/%s", (NR>1 ? "; " : ""), $1, $2, $3, $4}' "$OUT/loadavg")."
echo
echo "| scenario | measure | result | target |"
echo "|---|---|---|---|"
for protocol in $PROTOCOLS; do
    # The files and row labels of this protocol: sotw keeps the plain ones.
    suffix= tag=
    [[ $protocol == sotw ]] || { suffix=-$protocol; tag=" ($protocol)"; }
    if [[ -f $OUT/idle$suffix.json ]]; then
        jq -r --arg tag "$tag" '.levels[] | "| idle\($tag), \(.streams) streams | daemon RSS per stream (RSS \(.rss_kib) KiB − base \(.rss_base_kib) KiB) | \((.bytes_per_stream / 1024 * 10 | round) / 10) KiB | ≤ 32 KiB at 10,000 |"' "$OUT/idle$suffix.json"
    fi
    if [[ -f $OUT/fanout$suffix.json ]]; then
        fanout_rows "$OUT/fanout$suffix.json" "fan-out$tag"
    fi
    if [[ -f $OUT/fanout-polled$suffix.json ]]; then
        f=$OUT/fanout-polled$suffix.json
        fanout_rows "$f" "fan-out$tag with status polling"
        echo "| | loadgen CPU per update (median) | $(median '.updates[].loadgen_cpu_ms' "$f") ms | |"
        status_rows "$f"
    fi
    if [[ -f $OUT/full-push$suffix.json ]]; then
        f=$OUT/full-push$suffix.json
        echo "| full-push$tag, $(jq -r .streams "$f") streams, all $(jq -r .clusters "$f") clusters and the listener changed | convergence (new CDS and LDS) p50 / p99 / max (worst of $(jq '.updates | length' "$f") updates) | $(msf .worst.p50_ms "$f") / $(msf .worst.p99_ms "$f") / $(msf .worst.max_ms "$f") | p99 ≤ 1 s |"
        echo "| | never converged (all updates) | $(jq -r .worst.never "$f") | 0 |"
        echo "| | PUT answered / daemon CPU / loadgen CPU per update (medians) | $(median '.updates[].put_ms' "$f") ms / $(median '.updates[].daemon_cpu_ms' "$f") ms / $(median '.updates[].loadgen_cpu_ms' "$f") ms | |"
        echo "| | streams that took clusters / endpoints / listeners / routes, responses per stream (max), all updates | $(jq -r '[.updates[].received] as $r | ["clusters", "endpoints", "listeners", "routes"] | map(. as $t | "\($r | map(.[$t].streams) | min), \($r | map(.[$t].responses_per_stream_max) | max)") | join(" / ")' "$f") | all, 1 (EDS, RDS: the warming re-request's answer) |"
        status_rows "$f"
    fi
    if [[ -f $OUT/scale$suffix.json ]]; then
        f=$OUT/scale$suffix.json
        jq -r --arg tag "$tag" '.levels[] | "| scale\($tag), \(.streams) streams (from \(.connections.clients | keys | length) addresses) | daemon RSS per stream (RSS \(.rss_kib) KiB − base \(.rss_base_kib) KiB) | \((.bytes_per_stream / 1024 * 10 | round) / 10) KiB | ≤ 32 KiB at 10,000 |\n| | fan-out p50 / p99 / max (worst of \(.updates | length) updates) / never | \(.worst.p50_ms | round) / \(.worst.p99_ms | round) / \(.worst.max_ms | round) ms / \(.worst.never) | p99 ≤ 1 s / 0 |\n| | daemon CPU / loadgen CPU per update (median) | \([.updates[].daemon_cpu_ms] | sort | .[length/2|floor]) ms / \([.updates[].loadgen_cpu_ms] | sort | .[length/2|floor]) ms | |"' "$f"
    fi
    if [[ -f $OUT/ingest$suffix.json ]]; then
        f=$OUT/ingest$suffix.json
        echo "| ingest$tag, $(jq -r .clusters "$f") clusters + CLAs, $(jq -r '.body_bytes / 1e6 * 10 | round / 10' "$f") MB JSON | PUT answered 200 | $(msf .put_ms "$f") | ≤ 1 s |"
        echo "| | first Envoy has the clusters / all $(jq -r .streams "$f") have clusters + endpoints | $(msf .first_cds_ms "$f") / $(msf .update.max_ms "$f") | ≤ 1 s |"
        echo "| | daemon peak RSS (VmHWM) | $(jq -r '.peak_rss_kib / 1024 | round' "$f") MiB | |"
    fi
    if [[ -f $OUT/burst$suffix.json ]]; then
        f=$OUT/burst$suffix.json
        jq -r --arg tag "$tag" --argjson n "$(jq .streams "$f")" '.rounds[] | "| burst\($tag) round \(.round), \(.puts) PUTs in \(.puts_ms | round) ms, \($n) streams | streams on the last version / never / EDS responses per stream (mean, max) / unACKed | \(.ended_on_last) / \(.never) / \(.eds_responses_per_stream_mean * 10 | round / 10), \(.eds_responses_per_stream_max) / \(.unacked_responses) | all / 0 / < PUTs / 0 |\n| | daemon RSS before → after | \(.rss_before_kib) → \(.rss_after_kib) KiB | no growth |"' "$f"
    fi
    if [[ -f $OUT/cloud-map$suffix.json ]]; then
        f=$OUT/cloud-map$suffix.json
        echo "| cloud-map$tag, $(jq -r .sources "$f") sources × $(jq -r .instances "$f") instances, $(jq -r .streams "$f") streams | new instance: every stream has the new EDS, p50 / p99 / max after the poll that saw it (worst of $(jq '.updates | length' "$f") updates) | $(msf .worst.p50_ms "$f") / $(msf .worst.p99_ms "$f") / $(msf .worst.max_ms "$f") | p99 ≤ 1 s |"
        echo "| | never converged (all updates) / EDS responses per stream, resources per response (max) | $(jq -r '.worst.never' "$f") / $(jq -r '[.updates[].eds_responses.responses_per_stream_max] | max' "$f"), $(jq -r '[.updates[].eds_responses.resources_per_response_max] | max' "$f") | 0 / 1, 1 |"
        echo "| | registration → the poll that saw it (median) / daemon CPU per update (median) | $(jq -r '[.updates[].seen_ms] | sort | .[length/2|floor] | round' "$f") ms / $(jq -r '[.updates[].daemon_cpu_ms] | sort | .[length/2|floor]' "$f") ms | ≤ one interval |"
        echo "| | Cloud Map calls per minute at steady state over $(jq -r '.steady.seconds | round' "$f") s, interval $(jq -r .interval_s "$f") s, refresh $(jq -r .refresh_s "$f") s: DiscoverInstancesRevision / DiscoverInstances / throttled or failed | $(jq -r '.steady | "\(.revision_per_minute | round) / \(.instances_per_minute | round) / \(.failed_per_minute | round)"' "$f") | ≈ $(jq -r '.steady | "\(.expected_revision_per_minute | round) / \(.expected_instances_per_minute | round)"' "$f") / 0 |"
        echo "| | daemon CPU at steady state / RSS | $(jq -r '.steady | "\(.daemon_cpu_ms / 10 / .seconds * 10 | round / 10) % of a core / \(.rss_kib / 1024 | round) MiB"' "$f") | |"
    fi
done
for f in "$OUT"/wire-floor*.txt; do
    [[ -f $f ]] || continue
    echo "| $(head -n 1 "$f" | sed 's/^wire floor: /wire floor (no sxds), /') | server CPU a round (mean) | $(tail -n 1 "$f" | sed -E 's/^mean: server CPU ([0-9.]+ ms) a round \(([0-9.]+ µs)[^)]*\).*/\1 (\2 a response and its ACK)/') | the floor under a fan-out's CPU |"
done
if [[ -f $OUT/memory.json ]]; then
    jq -r '.bundles[] | "| memory, \(.bundle), \(.json_bytes / 1e6 * 10 | round / 10) MB JSON | RSS kept after the PUT / encoded size (\(.encoded_bytes / 1e6 * 10 | round / 10) MB) | \(.retained_bytes / 1e6 * 10 | round / 10) MB (\(.factor * 100 | round / 100)×) | a small factor |"' "$OUT/memory.json"
fi
echo
echo "raw results: $OUT" >&2
if [[ -n $FAILED ]]; then
    echo "failed scenarios:$FAILED" >&2
    exit 1
fi
