#!/usr/bin/env bash
# gRPC against Triton's gRPC port, and gRPC against REST on our own server (issue 16): the
# peers' `tiny` model at concurrency 1, 8 and 32 and `mlp` at 32, raw tensors, measured with
# tools/bench.py (-i grpc, and binary tensors over HTTP) on the same machine in one run.
#
# Usage: tools/measure_grpc.sh [--interval MS] [--servers triton,ours]
# Needs the peers under $PEERS_HOME (default /tmp/cinfer-peers; ../shared/peers/compare.sh
# installs Triton and writes the models). Triton listens on 18000/18001 (as compare.sh starts
# it), ours on 18100 (REST) and 18101 (gRPC), authentication off. Prints one
# line per cell: server, protocol, model, concurrency, infer/s and p50 latency (bench.py's
# stable windows; its messages go to $PEERS_HOME/measure-grpc.err).
set -euo pipefail

project=$(cd "$(dirname "$0")/.." && pwd)
home=${PEERS_HOME:-/tmp/cinfer-peers}
interval=3000
servers=triton,ours
while [ $# -gt 0 ]; do
  case "$1" in
    --interval) interval=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
py="$project/.venv/bin/python"
pid=""
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true; pid=""
  fi
}
trap stop EXIT

wait_ready() {  # url
  for _ in $(seq 1 90); do
    curl -sf -o /dev/null "$1/v2/health/ready" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

bench() {  # server protocol address model concurrency
  local out
  out=$("$py" "$project/tools/bench.py" -m "$4" -i "$2" -u "$3" --concurrency-range "$5" \
          -p "$interval" --max-trials 6 2>>"$home/measure-grpc.err") || true
  echo "$out" | awk -v s="$1" -v p="$2" -v m="$4" 'NR == 2 {
    gsub(",", "", $2); printf "CELL %s %s %s c=%s infer/s=%s p50_us=%s\n", s, p, m, $1, $2, $5 }'
}

cells() {  # server protocol address
  bench "$1" "$2" "$3" tiny 8 >/dev/null  # warm-up, not reported
  for c in 1 8 32; do bench "$1" "$2" "$3" tiny "$c"; done
  bench "$1" "$2" "$3" mlp 32
}

: >"$home/measure-grpc.err"
IFS=, read -ra list <<<"$servers"
for server in "${list[@]}"; do
  case "$server" in
    triton)
      site="$home/triton/lib/python3.11/site-packages"
      LD_LIBRARY_PATH="$site/nvidia_pytriton.libs" "$site/pytriton/tritonserver/bin/tritonserver" \
        --model-repository="$home/repo-triton" --backend-directory="$home/triton-backends" \
        --http-port=18000 --grpc-port=18001 --metrics-port=18002 --allow-gpu-metrics=false \
        >"$home/triton-grpc.log" 2>&1 &
      pid=$!
      wait_ready http://127.0.0.1:18000 || { echo "triton did not start: $home/triton-grpc.log" >&2; exit 1; }
      cells triton grpc 127.0.0.1:18001
      ;;
    ours)
      (cd "$project" && CINFER_AUTH__ENABLED=false CINFER_CONSOLE__ENABLED=false \
        CINFER_JOBS__ENABLED=false CINFER_GRPC__ENABLED=true CINFER_GRPC__PORT=18101 \
        exec "$py" -m server --repository "$home/repo-ours" --host 127.0.0.1 --port 18100) \
        >"$home/ours-grpc.log" 2>&1 &
      pid=$!
      wait_ready http://127.0.0.1:18100 || { echo "ours did not start: $home/ours-grpc.log" >&2; exit 1; }
      cells ours grpc 127.0.0.1:18101
      cells ours http 127.0.0.1:18100
      ;;
    *) echo "unknown server: $server" >&2; exit 2 ;;
  esac
  stop
done
