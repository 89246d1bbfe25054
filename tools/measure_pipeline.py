"""A two-step pipeline of `tiny` models against one direct `tiny` request, measured with wrk
(docs/performance.md, "Pipelines (issue 17)").

    .venv/bin/python tools/measure_pipeline.py [--seconds 4] [--rounds 3] [-c 8]

One server over a temporary repository holding the peers' `tiny` model
(../shared/peers/compare.sh writes it under $PEERS_HOME, default /tmp/cinfer-peers) and
`tiny2`, a pipeline of two `tiny` steps (the first's OUTPUT0 is the second's INPUT0). The
same binary body (../shared/peers/wrk_infer.lua) goes to each, alternating round by round at
`-c` connections; it prints every round and the medians, with pipeline / direct.
"""

from __future__ import annotations

import argparse
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

PROJECT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("PEERS_HOME", "/tmp/cinfer-peers"))
SCRIPT = PROJECT.parent / "shared" / "peers" / "wrk_infer.lua"
LOADS = {"direct": "tiny", "pipeline": "tiny2"}
PIPELINE = """engine = "pipeline"
max_batch_size = 32

[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [16]

[[steps]]
name = "first"
model = "tiny"
inputs = { INPUT0 = "INPUT0" }

[[steps]]
name = "second"
model = "tiny"
inputs = { INPUT0 = "first.OUTPUT0" }

[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [16]
from = "second.OUTPUT0"
"""


def wrk(url: str, connections: int, seconds: int) -> float:
    body = PEERS / "tiny.bin"
    env = {**os.environ, "BODY": str(body), "HDRLEN": (PEERS / "tiny.binhdr").read_text().strip()}
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(SCRIPT), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    fields = dict(p.split("=") for p in line.split()[1:])
    if fields["errors"] != "0" or fields["non2xx"] != "0":
        sys.exit(f"failed requests: {line}")
    return float(fields["rps"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-c", "--connections", type=int, default=8)
    parser.add_argument(
        "--batching", action="store_true",
        help="give tiny [batching] (max_queue_delay_us = 0): concurrent requests share runs",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "repo-ours" / "tiny").is_dir():
        sys.exit("needs wrk and the peers' tiny model: run ../shared/peers/compare.sh once")
    with tempfile.TemporaryDirectory(prefix="cinfer-pipeline-") as tmp:
        root = Path(tmp) / "repository"
        shutil.copytree(PEERS / "repo-ours" / "tiny", root / "tiny")
        if args.batching:
            with open(root / "tiny" / "model.toml", "a") as toml:
                toml.write("\n[batching]\nmax_queue_delay_us = 0\n")
        (root / "tiny2" / "1").mkdir(parents=True)
        (root / "tiny2" / "model.toml").write_text(PIPELINE)
        port = free_port()
        env = {**os.environ, "CINFER_AUTH__ENABLED": "false", "CINFER_CONSOLE__ENABLED": "false",
               "CINFER_JOBS__ENABLED": "false"}  # fmt: skip
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--repository", str(root), "--port", str(port),
             "--log-level", "warning"],
            cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/v2/models/tiny2/ready") as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not get ready")
                time.sleep(0.1)
            for model in LOADS.values():  # warm-up: one second each
                wrk(f"{base}/v2/models/{model}/infer", args.connections, 1)
            results: dict[str, list[float]] = {name: [] for name in LOADS}
            for round_ in range(args.rounds):
                for name, model in LOADS.items():
                    rps = wrk(f"{base}/v2/models/{model}/infer", args.connections, args.seconds)
                    results[name].append(rps)
                line = ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items())
                print(f"round {round_ + 1}: {line}", flush=True)
            medians = {name: statistics.median(values) for name, values in results.items()}
            print(f"\n| tiny binary c={args.connections}, infer/s | direct tiny | "
                  "pipeline tiny -> tiny | pipeline / direct |")  # fmt: skip
            print("| --- | --- | --- | --- |")
            print(
                f"| median of {args.rounds} rounds of {args.seconds} s | "
                f"{medians['direct']:,.0f} | {medians['pipeline']:,.0f} | "
                f"**{medians['pipeline'] / medians['direct']:.2f}** |"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
