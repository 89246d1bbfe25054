"""Tensors through system shared memory against binary HTTP, on one server (docs/performance.md,
"System shared memory (issue 16)").

    .venv/bin/python tools/measure_shm.py [--seconds 6] [--rounds 5] [--concurrency 8]

One server over the peers' repository (../shared/peers/compare.sh writes it under
$PEERS_HOME, default /tmp/cinfer-peers); wrk sends the peers' `mlp` request (1024 floats in,
1024 out) at `--concurrency`, rounds alternating between two bodies:

- binary: the input and the output as binary tensors in the body (compare.sh's body);
- shared memory: a JSON body naming two registered regions, the input read from one and
  the output written into the other (every connection shares them: a benchmark's shortcut,
  since wrk sends one body; a real client gives each request in flight its own).

Needs wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.utils.shared_memory as shm

PROJECT = Path(__file__).resolve().parent.parent
LUA = PROJECT.parent / "shared" / "peers" / "wrk_infer.lua"
PEERS = Path(os.environ.get("PEERS_HOME", "/tmp/cinfer-peers"))
WIDTH = 1024


def wrk(url: str, body: Path, header: str, c: int, seconds: int) -> dict[str, float]:
    env = {**os.environ, "BODY": str(body), "HDRLEN": header}
    done = subprocess.run(
        ["wrk", "-t1", f"-c{c}", f"-d{seconds}s", "-s", str(LUA), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}


def post(url: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "repo-ours" / "mlp").is_dir():
        sys.exit("needs wrk and the peers' models: run ../shared/peers/compare.sh once")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CINFER_AUTH__ENABLED": "false", "CINFER_CONSOLE__ENABLED": "false",
           "CINFER_JOBS__ENABLED": "false"}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "server", "--repository", str(PEERS / "repo-ours"),
         "--port", str(port), "--log-level", "warning"],
        cwd=PROJECT, env=env,
    )  # fmt: skip
    size = WIDTH * 4
    tag = f"cinfer-measure-{os.getpid()}"
    regions = [shm.create_shared_memory_region(n, f"/{tag}-{n}", size) for n in ("in", "out")]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/models/mlp/ready") as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("mlp did not become ready")
                time.sleep(0.2)
        values = np.random.default_rng(0).random((1, WIDTH), dtype=np.float32)
        shm.set_shared_memory_region(regions[0], [values])
        for name in ("in", "out"):
            post(f"{url}/v2/systemsharedmemory/region/{name}/register",
                 {"key": f"/{tag}-{name}", "byte_size": size})  # fmt: skip
        region = {"shared_memory_byte_size": size}
        body = {
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, WIDTH],
                        "parameters": {"shared_memory_region": "in", **region}}],
            "outputs": [{"name": "OUTPUT0",
                         "parameters": {"shared_memory_region": "out", **region}}],
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            shared = Path(tmp) / "shm.json"
            shared.write_text(json.dumps(body))
            bodies = {
                "binary HTTP": (PEERS / "mlp.bin", (PEERS / "mlp.binhdr").read_text().strip()),
                "shared memory": (shared, ""),
            }
            infer = f"{url}/v2/models/mlp/infer"
            for path, header in bodies.values():  # warm up
                wrk(infer, path, header, args.concurrency, 2)
            found: dict[str, list[dict[str, float]]] = {name: [] for name in bodies}
            for number in range(1, args.rounds + 1):
                for name, (path, header) in bodies.items():
                    result = wrk(infer, path, header, args.concurrency, args.seconds)
                    assert result["errors"] == 0 and result["non2xx"] == 0, result
                    found[name].append(result)
                line = ", ".join(f"{n} {r[-1]['rps']:,.0f}" for n, r in found.items())
                print(f"round {number}: {line}", flush=True)
        print(f"\n| mlp, c={args.concurrency} | infer/s (median) | p50 us | p99 us | rounds |")
        print("| --- | --- | --- | --- | --- |")
        for name, results in found.items():
            rps = [r["rps"] for r in results]
            print(f"| {name} | {statistics.median(rps):,.0f} | "
                  f"{statistics.median(r['p50_us'] for r in results):,.0f} | "
                  f"{statistics.median(r['p99_us'] for r in results):,.0f} | "
                  f"{', '.join(f'{v:,.0f}' for v in rps)} |")  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
        for handle in regions:
            shm.destroy_shared_memory_region(handle)


if __name__ == "__main__":
    main()
