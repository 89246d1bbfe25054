"""Python models against Triton's Python backend, and an ONNX model beside a busy Python one
(docs/performance.md, "Python models (issue 17)"), measured with wrk.

    .venv/bin/python tools/measure_python.py [--seconds 4] [--rounds 3] [--batching]

Two loads, each alternating round by round:

- `affine`, a Python model computing 2x + 1 on FP32 [-1, 16], written once for this server
  (engine = "python") and once for Triton's Python backend, at c=1 and c=8 with the same
  binary body (the peers' `tiny` body: INPUT0 FP32 [1, 16]), one instance each; with
  --batching, dynamic batching on both sides (`[batching]` with no delay here,
  `dynamic_batching { }` in Triton's config);
- the peers' `tiny` ONNX model at c=8 on this server alone, and again while a second wrk
  keeps `busy` (a Python model spinning a core for 20 ms per request) loaded at c=2.

Needs wrk and the peers under $PEERS_HOME (default /tmp/cinfer-peers): run
../shared/peers/compare.sh once, which installs Triton and writes the models. Triton listens
on 18000 as compare.sh starts it; this server on a free port, authentication off.
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
TRITON_PORT = 18000

IO = """
[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [16]

[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [16]
"""
AFFINE_TOML = 'engine = "python"\nmax_batch_size = 32\n' + IO
AFFINE_PY = """import numpy as np


class Affine:
    def __init__(self, path, parameters):
        pass

    def predict(self, inputs):
        return {"OUTPUT0": (inputs["INPUT0"] * 2 + 1).astype(np.float32)}
"""
BUSY_PY = '''import time


class Busy:
    """Spins its core for 20 ms per request, then answers its input."""

    def __init__(self, path, parameters):
        pass

    def predict(self, inputs):
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
        return {"OUTPUT0": inputs["INPUT0"]}
'''
TRITON_CONFIG = """backend: "python"
max_batch_size: 32
input [{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] }]
output [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] }]
instance_group [{ count: 1, kind: KIND_CPU }]
"""
TRITON_PY = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x * 2 + 1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return responses
"""


def wrk(url: str, connections: int, seconds: int) -> float:
    env = {
        **os.environ,
        "BODY": str(PEERS / "tiny.bin"),
        "HDRLEN": (PEERS / "tiny.binhdr").read_text().strip(),
    }
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(SCRIPT), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    fields = dict(p.split("=") for p in line.split()[1:])
    if fields["errors"] != "0" or fields["non2xx"] != "0":
        sys.exit(f"failed requests at {url}: {line}")
    return float(fields["rps"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            sys.exit(f"{what} did not get ready")
        time.sleep(0.2)


def repositories(tmp: Path, batching: bool) -> tuple[Path, Path]:
    ours, triton = tmp / "ours", tmp / "triton"
    for name, code in (("affine", AFFINE_PY), ("busy", BUSY_PY)):
        (ours / name / "1").mkdir(parents=True)
        toml = AFFINE_TOML + ("\n[batching]\n" if batching and name == "affine" else "")
        (ours / name / "model.toml").write_text(toml)
        (ours / name / "1" / "model.py").write_text(code)
    shutil.copytree(PEERS / "repo-ours" / "tiny", ours / "tiny")
    (triton / "affine" / "1").mkdir(parents=True)
    (triton / "affine" / "config.pbtxt").write_text(
        TRITON_CONFIG + ("dynamic_batching { }\n" if batching else "")
    )
    (triton / "affine" / "1" / "model.py").write_text(TRITON_PY)
    return ours, triton


def start_triton(repository: Path, log: Path) -> subprocess.Popen[bytes]:
    site = PEERS / "triton" / "lib" / "python3.11" / "site-packages"
    binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    env = {**os.environ, "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs")}
    return subprocess.Popen(
        [str(binary), f"--model-repository={repository}",
         f"--backend-directory={PEERS / 'triton-backends'}", f"--http-port={TRITON_PORT}",
         f"--grpc-port={TRITON_PORT + 1}", f"--metrics-port={TRITON_PORT + 2}",
         "--allow-gpu-metrics=false"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def start_ours(repository: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CINFER_AUTH__ENABLED": "false", "CINFER_CONSOLE__ENABLED": "false",
           "CINFER_JOBS__ENABLED": "false"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "server", "--repository", str(repository), "--port", str(port),
         "--log-level", "warning"],
        cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def beside(base: str, seconds: int) -> float:
    """tiny at c=8 while a second wrk keeps `busy` loaded at c=2."""
    busy = subprocess.Popen(
        ["wrk", "-t1", "-c2", f"-d{seconds + 2}s", "-s", str(SCRIPT),
         f"{base}/v2/models/busy/infer"],
        env={**os.environ, "BODY": str(PEERS / "tiny.bin"),
             "HDRLEN": (PEERS / "tiny.binhdr").read_text().strip()},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)  # the busy load under way before tiny's is measured
        return wrk(f"{base}/v2/models/tiny/infer", 8, seconds)
    finally:
        busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batching", action="store_true", help="dynamic batching on both")
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "triton-backends" / "python").is_dir():
        sys.exit("needs wrk and the peers' Triton: run ../shared/peers/compare.sh once")
    with tempfile.TemporaryDirectory(prefix="cinfer-python-") as tmp:
        ours_repo, triton_repo = repositories(Path(tmp), args.batching)
        port = free_port()
        base, triton_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{TRITON_PORT}"
        servers = [
            start_triton(triton_repo, Path(tmp) / "triton.log"),
            start_ours(ours_repo, port, Path(tmp) / "ours.log"),
        ]
        try:
            wait_ready(f"{triton_base}/v2/models/affine/ready", servers[0], "Triton")
            for model in ("affine", "busy", "tiny"):
                wait_ready(f"{base}/v2/models/{model}/ready", servers[1], f"this server's {model}")
            cells = {
                "ours c=1": lambda: wrk(f"{base}/v2/models/affine/infer", 1, args.seconds),
                "triton c=1": lambda: wrk(f"{triton_base}/v2/models/affine/infer", 1, args.seconds),
                "ours c=8": lambda: wrk(f"{base}/v2/models/affine/infer", 8, args.seconds),
                "triton c=8": lambda: wrk(f"{triton_base}/v2/models/affine/infer", 8, args.seconds),
                "tiny alone": lambda: wrk(f"{base}/v2/models/tiny/infer", 8, args.seconds),
                "tiny beside busy": lambda: beside(base, args.seconds),
            }  # fmt: skip
            for url in (f"{base}/v2/models/affine/infer", f"{triton_base}/v2/models/affine/infer"):
                wrk(url, 8, 1)  # warm-up
            results: dict[str, list[float]] = {name: [] for name in cells}
            for round_ in range(args.rounds):
                for name, cell in cells.items():
                    results[name].append(cell())
                line = ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items())
                print(f"round {round_ + 1}: {line}", flush=True)
            m = {name: statistics.median(values) for name, values in results.items()}
            print(f"\nmedians of {args.rounds} rounds of {args.seconds} s, infer/s\n")
            print("| load | Cinfer | Triton Python backend | Cinfer / Triton |")
            print("| --- | --- | --- | --- |")
            for c in (1, 8):
                ours, theirs = m[f"ours c={c}"], m[f"triton c={c}"]
                print(f"| affine c={c} | {ours:,.0f} | {theirs:,.0f} | **{ours / theirs:.2f}** |")
            print("\n| tiny c=8 | alone | beside busy at c=2 | beside / alone |")
            print("| --- | --- | --- | --- |")
            alone, near = m["tiny alone"], m["tiny beside busy"]
            print(f"| this server | {alone:,.0f} | {near:,.0f} | **{near / alone:.2f}** |")
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()


if __name__ == "__main__":
    main()
