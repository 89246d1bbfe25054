#!/usr/bin/env bash
# The cost of API tokens on the hot path: the peers' `tiny` model at concurrency 32, with
# authentication off (as ../shared/peers/compare.sh runs it) and on with a valid token,
# back to back and alternating, on the same machine (issue 5; docs/performance.md).
#
# Usage: tools/measure_auth.sh [--seconds N] [--rounds N] [--payloads json,binary]
#                              [--configs off,on[,on-nolog][,on-limits]]
#   on-nolog: auth on with [auth] log_retention_days = 0 (no per-request usage log), to
#   tell the cost of the checks from the cost of writing the log.
#   on-limits: auth on with a token that has a monthly quota and a rate limit (both far
#   above what the run sends): the cost of quota leases and the rate bucket.
# Needs wrk and the peers' models and bodies under $PEERS_HOME (default /tmp/cinfer-peers;
# ../shared/peers/compare.sh --servers ours writes them). PORT (default 18150) is where the
# server listens. Prints one line per run and a table of the medians over the rounds: infer/s
# and the server's CPU time per answered request (user + system, all its threads), which
# moves less than infer/s when other work shares the machine.
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
here="$project/../shared/peers"
home=${PEERS_HOME:-/tmp/cinfer-peers}
port=${PORT:-18150}
seconds=8
rounds=3
payloads=json,binary
configs=off,on
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --payloads) payloads=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for need in "$home/repo-ours/tiny/model.toml" "$home/tiny.json" "$here/wrk_infer.lua"; do
  [ -e "$need" ] || { echo "missing $need: run ../shared/peers/compare.sh --servers ours once" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 2; }
py=python3
[ -x "$project/.venv/bin/python" ] && py="$project/.venv/bin/python"

work=$(mktemp -d)
pid=""
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi; }
trap 'stop; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
export CINFER_AUTH__DATABASE="$work/cinfer.db"

start() {  # auth: true|false, usage log retention days
  (cd "$project" && CINFER_AUTH__ENABLED=$1 CINFER_AUTH__LOG_RETENTION_DAYS=$2 \
     exec "$py" -m server --repository "$home/repo-ours" \
     --host 127.0.0.1 --port "$port" --log-level warning) >>"$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 90); do
    curl -sf -o /dev/null "$url/v2/health/ready" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  echo "server did not start; its log:" >&2; cat "$work/server.log" >&2; exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }  # the server's user + system time
clk=$(getconf CLK_TCK)

run() {  # label payload token -> prints the wrk line; records "label payload rps cpu_us"
  local body="$home/tiny.json" hdr=""
  [ "$2" = binary ] && { body="$home/tiny.bin"; hdr=$(cat "$home/tiny.binhdr"); }
  local line before after rps cpu
  before=$(cpu_ticks)
  line=$(BODY=$body HDRLEN=$hdr TOKEN=$3 wrk -t1 -c32 -d"${seconds}s" -s "$here/wrk_infer.lua" \
           "$url/v2/models/tiny/infer" | grep '^RESULT' || echo "RESULT rps=0 failed")
  after=$(cpu_ticks)
  rps=$(echo "$line" | sed -E 's/.*rps=([0-9]+).*/\1/')
  # Server CPU per answered request: steadier than infer/s when others share the machine.
  cpu=$(awk -v t=$((after - before)) -v c="$clk" -v r="$rps" -v s="$seconds" \
          'BEGIN {printf "%.0f", (r ? t / c * 1e6 / (r * s) : 0)}')
  echo "$1 tiny $2 c=32 ${line#RESULT } server_cpu_us=$cpu" >&2
  echo "$1 $2 $rps $cpu" >>"$work/results"
}

token=$(cd "$project" && "$py" -m server tokens create --name bench --scope infer 2>/dev/null)
limited=$(cd "$project" && "$py" -m server tokens create --name bench-limits --scope infer \
            --monthly-quota 1000000000000 --rate-limit 1000000000 2>/dev/null)
IFS=, read -ra kinds <<<"$payloads"
IFS=, read -ra setups <<<"$configs"
for round in $(seq 1 "$rounds"); do
  for setup in "${setups[@]}"; do
    case "$setup" in
      off) start false 30; tok="" ;;
      on) start true 30; tok=$token ;;
      on-nolog) start true 0; tok=$token ;;
      on-limits) start true 30; tok=$limited ;;
      *) echo "unknown configuration $setup" >&2; exit 2 ;;
    esac
    for payload in "${kinds[@]}"; do run "auth-$setup" "$payload" "$tok"; done
    stop
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
column() {  # label payload field -> the median of that field over the rounds
  awk -v c="$1" -v p="$2" -v f="$3" '$1==c && $2==p {print $f}' "$work/results" | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b ? a / b : 0)}'; }
header="| payload | auth off: infer/s, server CPU us/req |"
rule="| --- | --- |"
for setup in "${setups[@]}"; do
  [ "$setup" = off ] && continue
  header="$header auth $setup | $setup / off (infer/s) | $setup - off (CPU us/req) |"
  rule="$rule --- | --- | --- |"
done
echo "$header"; echo "$rule"
for payload in "${kinds[@]}"; do
  off=$(column auth-off "$payload" 3); off_cpu=$(column auth-off "$payload" 4)
  line="| tiny $payload c=32 | $off, $off_cpu |"
  for setup in "${setups[@]}"; do
    [ "$setup" = off ] && continue
    rps=$(column "auth-$setup" "$payload" 3); cpu=$(column "auth-$setup" "$payload" 4)
    line="$line $rps, $cpu | $(ratio "$rps" "$off") | $(awk -v a="$cpu" -v b="$off_cpu" 'BEGIN {printf "%+.0f", a - b}') |"
  done
  echo "$line"
done
used=$(cd "$project" && "$py" -m server tokens show bench --json | grep used_this_month)
echo "token requests counted: ${used#*: }" >&2
