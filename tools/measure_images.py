"""What server-side image decoding costs and saves, measured with wrk (docs/performance.md,
"Images in, labels out").

    .venv/bin/python tools/measure_images.py [--seconds 5] [--rounds 3]

One server over a temporary repository holding:

- `mnist`: the shipped sample (repository/mnist): clients send the PNG file itself, the
  server decodes and scales it ([images.image]);
- `mnist_tensor`: the same model file without the image declaration: clients send the FP32
  tensor they made from the same file (1 x 28 x 28, / 255) as a binary tensor;
- `photo`: a model that averages a 224 x 224 RGB image (`resize = "crop"`), sent 1280 x 960
  JPEG photographs: decoding-heavy work;
- `tiny`: the peers' overhead-bound model (../shared/peers/compare.sh writes it under
  $PEERS_HOME, default /tmp/cinfer-peers).

It prints two tables: images per second and bytes per request for mnist (files) against
mnist_tensor (tensors) at concurrency 1, 8 and 32, rounds alternating; and tiny's
throughput at concurrency 8 alone and beside a photo load (2 connections sending JPEGs).
Needs wrk. The client-side preprocessing is done once, before the run, so the tensor column
does not pay for it: the comparison favours sending tensors.
"""

from __future__ import annotations

import argparse
import io
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
import onnx
from onnx import TensorProto, helper
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_body.lua"
PEERS = Path(os.environ.get("PEERS_HOME", "/tmp/cinfer-peers"))
PHOTO_TOML = """engine = "onnxruntime"
max_batch_size = 8

[images.image]
color = "rgb"
size = [224, 224]
resize = "crop"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""


def request(
    name: str, datatype: str, shape: list[int], raw: bytes, outputs: list[str]
) -> tuple[bytes, int]:
    """A v2 request with one binary input and binary outputs: (body, JSON header length)."""
    header = json.dumps(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                     "parameters": {"binary_data_size": len(raw)}}],
         "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}
    ).encode()  # fmt: skip
    return header + raw, len(header)


def files(data: list[bytes]) -> bytes:
    """Files as a binary BYTES tensor: each a 4-byte little-endian length, then its bytes."""
    return b"".join(len(f).to_bytes(4, "little") + f for f in data)


def photo(seed: int) -> bytes:
    """A 1280 x 960 JPEG with a photograph's smooth gradients and some grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:960, 0:1280].astype(np.float32)
    base = np.stack([x / 1280 * 255, y / 960 * 255, (x + y) / 2240 * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


def mean_model(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["probabilities"], axes=[2, 3], keepdims=0)],
        "photo",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["b", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def repository(root: Path) -> None:
    shutil.copytree(PROJECT / "repository" / "mnist", root / "mnist")
    tensor = root / "mnist_tensor"
    (tensor / "1").mkdir(parents=True)
    shutil.copy(root / "mnist" / "1" / "model.onnx", tensor / "1" / "model.onnx")
    # The same model.toml without its [images] and [labels] tables: the same batching.
    toml = (root / "mnist" / "model.toml").read_text()
    (tensor / "model.toml").write_text(toml[: toml.index("# Clients send image files")])
    mean_model(root / "photo" / "1" / "model.onnx")
    (root / "photo" / "model.toml").write_text(PHOTO_TOML)
    shutil.copytree(PEERS / "repo-ours" / "tiny", root / "tiny")


def wrk(
    url: str, body: Path, content_type: str, header: int | None, c: int, s: float
) -> dict[str, float]:
    env = {**os.environ, "BODY": str(body), "CTYPE": content_type, "HDRLEN": str(header or "")}
    done = subprocess.run(
        ["wrk", "-t1", f"-c{c}", f"-d{s}s", "-s", str(LUA), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", choices=("throughput", "fairness"), help="one of the two tables, not both"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "repo-ours" / "tiny").is_dir():
        sys.exit("needs wrk and the peers' tiny model: run ../shared/peers/compare.sh once")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository(work / "models")
        digit = (PROJECT / "repository" / "mnist" / "digit-3.png").read_bytes()
        tensor = np.asarray(Image.open(io.BytesIO(digit)).convert("L"), np.float32) / 255
        both = ["probabilities", "label"]
        octet = "application/octet-stream"
        bodies = {
            "file": (*request("image", "BYTES", [1], files([digit]), both), octet),
            "tensor": (*request("image", "FP32", [1, 1, 28, 28], tensor.tobytes(), both), octet),
            "photo": (*request("image", "BYTES", [1], files([photo(0)]), ["probabilities"]),
                      octet),
            "tiny": ((PEERS / "tiny.bin").read_bytes(), int((PEERS / "tiny.binhdr").read_text()),
                     octet),
        }  # fmt: skip
        paths = {}
        for name, (body, _, _) in bodies.items():
            paths[name] = work / f"{name}.body"
            paths[name].write_bytes(body)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CINFER_AUTH__ENABLED": "false", "CINFER_CONSOLE__ENABLED": "false",
               "CINFER_JOBS__ENABLED": "false"}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--repository", str(work / "models"),
             "--port", str(port), "--log-level", "warning"],
            cwd=PROJECT, env=env,
        )  # fmt: skip
        try:
            ready(url, ["mnist", "mnist_tensor", "photo", "tiny"])
            if args.only != "fairness":
                throughput(url, bodies, paths, args.seconds, args.rounds)
            if args.only != "throughput":
                fairness(url, bodies, paths, args.seconds, args.rounds)
        finally:
            server.terminate()
            server.wait(30)


def ready(url: str, models: list[str]) -> None:
    deadline = time.monotonic() + 120
    for model in models:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/models/{model}/ready") as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"model {model} did not become ready")
            time.sleep(0.2)


def throughput(url: str, bodies: dict, paths: dict, seconds: int, rounds: int) -> None:
    """mnist: the PNG file against the client's FP32 tensor, rounds alternating."""
    infer = f"{url}/v2/models/{{}}/infer"
    print("| mnist, one image per request | concurrency | images/s | p50 ms | p99 ms | bytes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in (1, 8, 32):
        runs: dict[str, list[dict[str, float]]] = {"file": [], "tensor": []}
        for _ in range(rounds):
            for kind, model in (("file", "mnist"), ("tensor", "mnist_tensor")):
                _, header, ctype = bodies[kind]
                runs[kind].append(wrk(infer.format(model), paths[kind], ctype, header, c, seconds))
        for kind, label in (("file", "PNG file, decoded by the server"),
                            ("tensor", "FP32 tensor, made by the client")):  # fmt: skip
            rps = statistics.median(r["rps"] for r in runs[kind])
            p50 = statistics.median(r["p50_us"] for r in runs[kind]) / 1000
            p99 = statistics.median(r["p99_us"] for r in runs[kind]) / 1000
            size = len(bodies[kind][0])
            errors = sum(r["errors"] + r["non2xx"] for r in runs[kind])
            note = f" ({errors:.0f} errors)" if errors else ""
            print(f"| {label} | {c} | {rps:,.0f}{note} | {p50:.2f} | {p99:.2f} | {size:,} |")
    print()


def fairness(url: str, bodies: dict, paths: dict, seconds: int, rounds: int) -> None:
    """tiny at concurrency 8, alone and beside a photo load, rounds alternating."""
    infer = f"{url}/v2/models/{{}}/infer"
    print("| tiny binary, concurrency 8 | infer/s (median) | rounds |")
    print("| --- | --- | --- |")
    alone, beside, photos = [], [], []
    for _ in range(rounds):
        _, header, ctype = bodies["tiny"]
        alone.append(wrk(infer.format("tiny"), paths["tiny"], ctype, header, 8, seconds)["rps"])
        load = subprocess.Popen(
            ["wrk", "-t1", "-c2", f"-d{seconds + 2}s", "-s", str(LUA), infer.format("photo")],
            env={**os.environ, "BODY": str(paths["photo"]), "CTYPE": bodies["photo"][2],
                 "HDRLEN": str(bodies["photo"][1])},
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1)  # let the photo load start before measuring beside it
        beside.append(wrk(infer.format("tiny"), paths["tiny"], ctype, header, 8, seconds)["rps"])
        out, _ = load.communicate()
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        photos.append(float(line.split("rps=")[1].split()[0]))
    a, b = statistics.median(alone), statistics.median(beside)
    print(f"| alone | {a:,.0f} | {', '.join(f'{x:,.0f}' for x in alone)} |")
    print(
        f"| beside 2 connections sending 1280x960 JPEGs ({statistics.median(photos):,.0f} "
        f"photos/s, {len(bodies['photo'][0]):,} bytes each) | {b:,.0f} | "
        f"{', '.join(f'{x:,.0f}' for x in beside)} |"
    )
    print(f"| beside / alone | {b / a:.2f} | |")


if __name__ == "__main__":
    main()
