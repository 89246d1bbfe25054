#!/usr/bin/env bash
# What a dashboard open in the console costs the API: tiny binary at concurrency 32 (the
# peers' model, as ../shared/peers/compare.sh runs it, authentication off), alternating runs
# without and with browsers streaming the dashboard's live numbers (GET /console/live,
# server-sent events, signed in), on one server (issue 13; docs/performance.md).
#
# Usage: tools/measure_console.sh [--seconds N] [--rounds N] [--streams N]
# Needs wrk, curl and the peers' models and bodies under $PEERS_HOME (default
# /tmp/cinfer-peers; ../shared/peers/compare.sh --servers ours writes them). PORT (default
# 18190) is where the server listens. Prints each run and the medians.
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
here="$project/../shared/peers"
home=${PEERS_HOME:-/tmp/cinfer-peers}
port=${PORT:-18190}
seconds=5
rounds=5
streams=3
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
for need in "$home/repo-ours/tiny/model.toml" "$home/tiny.bin" "$here/wrk_infer.lua"; do
  [ -e "$need" ] || { echo "missing $need: run ../shared/peers/compare.sh --servers ours once" >&2; exit 2; }
done
py=python3
[ -x "$project/.venv/bin/python" ] && py="$project/.venv/bin/python"

work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
export CINFER_AUTH__DATABASE="$work/cinfer.db" CINFER_AUTH__ENABLED=false CINFER_CONSOLE__ENABLED=true
password="measure-console-password"
(cd "$project" && echo "$password" | "$py" -m server admin create --username bench --password-stdin >/dev/null)
(cd "$project" && exec "$py" -m server --repository "$home/repo-ours" --host 127.0.0.1 \
   --port "$port" --log-level warning) >>"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 90); do
  curl -sf -o /dev/null "$url/v2/health/ready" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 1
done

# Sign in as a browser does: the form's CSRF token, then the session cookie in the jar.
jar="$work/cookies"
csrf=$(curl -s -c "$jar" "$url/console/login" | sed -nE 's/.*name="csrf" value="([^"]+)".*/\1/p' | head -1)
curl -s -b "$jar" -c "$jar" -o /dev/null -w '%{http_code}' "$url/console/login" \
  --data-urlencode username=bench --data-urlencode "password=$password" \
  --data-urlencode "csrf=$csrf" | grep -q 303 || { echo "sign-in failed" >&2; exit 1; }

run() {  # label -> the wrk line; records "label rps"
  local line rps
  line=$(BODY="$home/tiny.bin" HDRLEN=$(cat "$home/tiny.binhdr") wrk -t1 -c32 -d"${seconds}s" \
           -s "$here/wrk_infer.lua" "$url/v2/models/tiny/infer" | grep '^RESULT' || echo "RESULT rps=0")
  rps=$(echo "$line" | sed -E 's/.*rps=([0-9]+).*/\1/')
  echo "$1 tiny binary c=32 ${line#RESULT }" >&2
  echo "$1 $rps" >>"$work/results"
}

for _ in $(seq 1 "$rounds"); do
  run alone
  readers=()
  for _ in $(seq 1 "$streams"); do
    curl -sN -b "$jar" "$url/console/live" >"$work/stream.$RANDOM" 2>/dev/null &
    readers+=($!)
  done
  run dashboards
  kill "${readers[@]}" 2>/dev/null || true
  wait "${readers[@]}" 2>/dev/null || true
done
grep -q '^event: sample' "$work"/stream.* || { echo "no live sample reached a stream" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
alone=$(awk '$1=="alone" {print $2}' "$work/results" | median)
with=$(awk '$1=="dashboards" {print $2}' "$work/results" | median)
echo "| tiny binary c=32 | alone: infer/s | with $streams dashboards streaming | with / alone |"
echo "| --- | --- | --- | --- |"
awk -v a="$alone" -v w="$with" 'BEGIN {printf "| median of %s | %d | %d | %.2f |\n", "'"$rounds"' rounds", a, w, (a ? w / a : 0)}'
