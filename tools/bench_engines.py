"""Serve one ONNX model through every engine and measure what the server costs.

    python tools/bench_engines.py /tmp/cinfer-peers/models/mlp.onnx --body /tmp/cinfer-peers/mlp.bin

For the peers' `mlp` (four 1024x1024 Gemm+Relu layers, ../shared/peers/make_models.py) this
writes the same network as ONNX, as OpenVINO IR (openvino.convert_model) and as TorchScript
(the Gemm weights in torch.nn.Linear), then for each engine:

1. the engine's own limit: the server's engine class alone in a tight loop (`Engine.run`, no
   HTTP, no scheduler), inferences/s at batch 1 and 32;
2. the server: `python -m server` over a repository holding only that model (max_batch_size
   32, dynamic batching, one instance, as the peers' repository), loaded by wrk at
   concurrency 32 with the body given (binary tensors), wrk_infer.lua counting 2xx only.

Prints one line per measurement and a Markdown table of the medians over --repeat rounds;
"diff" is the largest difference from onnxruntime's output for the same batch of 32, relative
to the output's largest value. It also prints OpenVINO's CPU capabilities: without BF16 there,
INFERENCE_PRECISION_HINT = "bf16" has nothing to switch to.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import openvino as ov

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as server/engines/torch.py does
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.engines import LoadOptions, cpu_count, engine_class  # noqa: E402
from server.model_config import TensorSpec  # noqa: E402

WRK_SCRIPT = ROOT.parent / "shared" / "peers" / "wrk_infer.lua"
TOML = """\
engine = "{engine}"
max_batch_size = 32
instances = 1
{parameters}
[[inputs]]
name = "INPUT0"
datatype = "FP32"
shape = [{width}]

[[outputs]]
name = "OUTPUT0"
datatype = "FP32"
shape = [{width}]

[batching]
"""


class Dense(torch.nn.Module):
    """Gemm+Relu layers from the ONNX initializers W0, B0, W1, ... (Gemm: x @ W + B)."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for w, b in weights:
            layer = torch.nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.T.copy()))
                layer.bias.copy_(torch.from_numpy(b))
            self.layers.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def write_repositories(onnx_file: Path, out: Path) -> tuple[dict[str, Path], int]:
    """One repository per engine, each holding `mlp`; returns them and the width."""
    model = onnx.load(onnx_file)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = sorted(int(n[1:]) for n in inits if n.startswith("W"))
    weights = [(inits[f"W{i}"], inits[f"B{i}"]) for i in layers]
    width = weights[0][0].shape[0]
    repos = {}
    for engine in ("onnxruntime", "openvino", "torch"):
        repo = out / f"repo-{engine}"
        shutil.rmtree(repo, ignore_errors=True)
        folder = repo / "mlp" / "1"
        folder.mkdir(parents=True)
        if engine == "onnxruntime":
            shutil.copy(onnx_file, folder / "model.onnx")
        elif engine == "openvino":
            ov.save_model(ov.convert_model(onnx_file), folder / "model.xml", compress_to_fp16=False)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, torch 2.13
                torch.jit.script(Dense(weights).eval()).save(str(folder / "model.pt"))
        (repo / "mlp" / "model.toml").write_text(
            TOML.format(engine=engine, width=width, parameters="")
        )
        repos[engine] = repo
    return repos, width


def engine_limit(
    engine: str, path: Path, width: int, batch: int, seconds: float, parameters: dict[str, str]
) -> tuple[float, np.ndarray]:
    """Inferences/s of the engine class alone at one batch size, and one output."""
    spec = [TensorSpec(name="INPUT0", datatype="FP32", shape=(-1, width))]
    out = [TensorSpec(name="OUTPUT0", datatype="FP32", shape=(-1, width))]
    cls = engine_class(engine)
    runner = cls(
        LoadOptions(
            path=path,
            threads=cpu_count(),
            parameters=parameters,
            declared_inputs=spec,
            declared_outputs=out,
        )
    )
    x = {"INPUT0": np.random.default_rng(0).random((batch, width), dtype=np.float32)}
    for _ in range(20):
        result = runner.run(0, x, ["OUTPUT0"])["OUTPUT0"]
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.run(0, x, ["OUTPUT0"])
        runs += 1
    rate = runs * batch / (time.perf_counter() - start)
    runner.close()
    return rate, result


def serve_and_load(repo: Path, body: Path, seconds: int, port: int) -> str:
    log = open(repo.parent / f"server-{repo.name}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "server", "--repository", str(repo), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "CINFER_AUTH__ENABLED": "false"},  # as compare.sh serves it
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            ready = subprocess.run(
                ["curl", "-sf", f"{url}/v2/models/mlp/ready"], capture_output=True
            )
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{repo}: server not ready, see {log.name}")
        env = {
            **os.environ,
            "BODY": str(body),
            "HDRLEN": (body.with_suffix(".binhdr")).read_text().strip(),
        }
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c32",
                f"-d{seconds}s",
                "-s",
                str(WRK_SCRIPT),
                f"{url}/v2/models/mlp/infer",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", type=Path, help="the peers' mlp.onnx")
    parser.add_argument("--body", type=Path, required=True, help="binary infer body (mlp.bin)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cinfer-bench-engines"))
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table has medians")
    parser.add_argument("--port", type=int, default=18190)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    repos, width = write_repositories(args.onnx.resolve(), args.out)
    files = {"onnxruntime": "model.onnx", "openvino": "model.xml", "torch": "model.pt"}
    runs: dict[tuple[str, str], list[float]] = {}
    diffs: dict[str, float] = {}
    reference = None
    for _ in range(args.repeat):
        # Engines interleaved round by round, so a burst of load elsewhere hits each once.
        for engine, repo in repos.items():
            path = repo / "mlp" / "1" / files[engine]
            for batch in (1, 32):
                rate, result = engine_limit(engine, path, width, batch, 3.0, {})
                runs.setdefault((engine, f"limit{batch}"), []).append(rate)
                print(f"engine-limit {engine} batch={batch} infer_per_s={rate:.0f}", flush=True)
                if batch == 32:
                    reference = result if reference is None else reference
                    diffs[engine] = float(
                        np.max(np.abs(result - reference)) / np.max(np.abs(reference))
                    )
            served = serve_and_load(repo, args.body.resolve(), args.seconds, args.port)
            print(f"server {engine} binary c=32 {served}", flush=True)
            runs.setdefault((engine, "server"), []).append(
                float(served.split("rps=")[1].split()[0])
            )
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    print(f"OpenVINO CPU capabilities: {capabilities}")
    print()
    print("| engine | limit b=1 | limit b=32 | server c=32 | server/limit | max rel. diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for engine in repos:
        one, many, rps = (
            statistics.median(runs[(engine, key)]) for key in ("limit1", "limit32", "server")
        )
        print(
            f"| {engine} | {one:,.0f} | {many:,.0f} | {rps:,.0f} | {rps / many:.0%} "
            f"| {diffs[engine]:.1e} |"
        )


if __name__ == "__main__":
    main()
