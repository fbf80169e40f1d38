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
#
# Every scenario but memory (which opens no streams) runs once per protocol
# in $PROTOCOLS (sotw, delta; default sotw); delta results are kept as
# <scenario>-delta.json and their rows are marked (delta).
#
# Each scenario starts its own daemon (target/release/sxds) on free loopback
# ports with a temporary data directory. Raw JSON summaries are kept in
# $OUT (default target/bench/<timestamp>/). Needs: cargo, jq; cloud-map
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
cargo build --release --quiet --bin sxds --example loadgen
# Private copies: a rebuild of target/ during the run must not change the
# binaries under test (or their symbols, for a profiler) halfway.
mkdir -p "$OUT/bin"
cp target/release/sxds target/release/examples/loadgen "$OUT/bin/"
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

for protocol in $PROTOCOLS; do
    case $protocol in sotw | delta) ;; *) echo "unknown protocol $protocol (sotw, delta)" >&2; exit 2 ;; esac
done
for protocol in $PROTOCOLS; do
    for scenario in $SCENARIOS; do
        case $scenario in
            idle) run idle "$protocol" --scenario idle --streams "$IDLE_LEVELS" ;;
            fanout) run fanout "$protocol" --scenario fanout --streams "$FANOUT_STREAMS" --updates "$FANOUT_UPDATES" ;;
            ingest) run ingest "$protocol" --scenario ingest --streams "$INGEST_STREAMS" ;;
            burst) run burst "$protocol" --scenario burst --streams "$BURST_STREAMS" ;;
            # No streams: the same for every protocol, so measured once.
            memory) [[ -f $OUT/memory.txt ]] || run memory sotw --scenario memory ;;
            # Three replicas on the etcd that SXDS_STORE names; needs an sxds built
            # with --features etcd (SXDS_STORE=etcd://... SCENARIOS=replicas scripts/bench.sh).
            replicas) run replicas "$protocol" --scenario replicas --replicas 3 --streams 9000 --updates 5 ;;
            cloud-map) run cloud-map "$protocol" --scenario cloud-map --sources "$CLOUD_MAP_SOURCES" --instances "$CLOUD_MAP_INSTANCES" \
                --streams "$CLOUD_MAP_STREAMS" --cloud-map-interval "$CLOUD_MAP_INTERVAL" --cloud-map-refresh "$CLOUD_MAP_REFRESH" \
                --steady-secs "$CLOUD_MAP_STEADY_SECS" --updates 3 ;;
            *) echo "unknown scenario $scenario" >&2; exit 2 ;;
        esac
    done
done

kib() { jq -r "$1 | if . == null then \"-\" else (. / 1024 * 10 | round / 10 | tostring) + \" KiB\" end" "$2"; }
msf() { jq -r "$1 | if . == null then \"-\" else (. | round | tostring) + \" ms\" end" "$2"; }

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
        f=$OUT/fanout$suffix.json
        n=$(jq -r .streams "$f")
        echo "| fan-out$tag, $n streams, 1 of $(jq -r .clusters "$f") endpoint sets changed | convergence p50 / p99 / max (worst of $(jq '.updates | length' "$f") updates) | $(msf .worst.p50_ms "$f") / $(msf .worst.p99_ms "$f") / $(msf .worst.max_ms "$f") | p99 ≤ 1 s |"
        echo "| | never converged (all updates) | $(jq -r .worst.never "$f") | 0 |"
        echo "| | PUT answered (median) / daemon CPU per update (median) | $(jq -r '[.updates[].put_ms] | sort | .[length/2|floor] | round' "$f") ms / $(jq -r '[.updates[].daemon_cpu_ms] | sort | .[length/2|floor]' "$f") ms | no more on delta than on SotW |"
        echo "| | resources per EDS response (mean, max) / EDS responses per stream (mean, max), all updates | $(jq -r 'def r2: if . == null then "-" else (. * 100 | round / 100 | tostring) end; def worst(k): map(.[k] // empty) | max | r2;
            [.updates[].eds_responses] | "\(worst("resources_per_response_mean")), \(worst("resources_per_response_max")) / \(worst("responses_per_stream_mean")), \(worst("responses_per_stream_max"))"' "$f") | 1, 1 / 1, 1 |"
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
if [[ -f $OUT/memory.json ]]; then
    jq -r '.bundles[] | "| memory, \(.bundle), \(.json_bytes / 1e6 * 10 | round / 10) MB JSON | RSS kept after the PUT / encoded size (\(.encoded_bytes / 1e6 * 10 | round / 10) MB) | \(.retained_bytes / 1e6 * 10 | round / 10) MB (\(.factor * 100 | round / 100)×) | a small factor |"' "$OUT/memory.json"
fi
echo
echo "raw results: $OUT" >&2
if [[ -n $FAILED ]]; then
    echo "failed scenarios:$FAILED" >&2
    exit 1
fi
