"""Measure the live repository on a real server process: publish latency, swaps under load, RSS.

    .venv/bin/python tools/measure_reload.py [--runs 5] [--swaps 20] [--cycles 50]

1. copy -> READY: copy a sample model folder (repository/digits, repository/iris) into a watched
   repository, plainly and by atomic publish (copy to a hidden name, rename); time from the end
   of the copy (or the rename) to the first 200 from /v2/models/{m}/ready, with the default
   settle_ms = 500 and with settle_ms = 0 (which leaves the load itself).
2. swaps under load: two client threads send digits requests back to back while version
   folders 2, 3, ... are published; counts failed requests and readiness probes that were not
   200, and checks each swap ends with the new version serving and the old one unloaded.
3. RSS: explicit mode, load / infer / unload the same model N times through the repository
   API; VmRSS of the server process (from /proc) after the first cycle and after the last.

Prints Markdown tables for docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import live_server, server_log, wait_until  # noqa: E402

SAMPLES = ROOT / "repository"
DIGITS = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": [8.0] * 64}]}
IRIS = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.0] * 4}]}


def is_ready(client: httpx.Client, name: str) -> bool:
    return client.get(f"/v2/models/{name}/ready").status_code == 200


def is_gone(client: httpx.Client, name: str) -> bool:
    return client.get(f"/v2/models/{name}").status_code == 404


def served_by(served: Counter[str], version: int) -> bool:
    """The new version has answered a few requests (so traffic really moved to it)."""
    return served[str(version)] > 10


def logged(repo: Path, line: str, times: int = 1) -> bool:
    return server_log(repo).count(line) >= times


@contextlib.contextmanager
def server(env: dict[str, str]) -> Iterator[tuple[Path, httpx.Client, int]]:
    with tempfile.TemporaryDirectory(prefix="cinfer-measure-") as tmp:
        repo = Path(tmp) / "models"
        repo.mkdir()
        with (
            live_server(repo, "--log-level", "info", env=env) as (url, proc),
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            yield repo, client, proc.pid


def copy_to_ready(runs: int, settle_ms: int) -> list[tuple[str, str, list[float]]]:
    rows = []
    with server({"CINFER_REPOSITORY__SETTLE_MS": str(settle_ms)}) as (repo, client, _):
        for name in ("digits", "iris"):
            for how in ("cp -r", "atomic (cp -r .tmp, mv)"):
                times = []
                for _ in range(runs):
                    if how == "cp -r":
                        shutil.copytree(SAMPLES / name, repo / name)
                    else:
                        shutil.copytree(SAMPLES / name, repo / f".{name}.tmp")
                        (repo / f".{name}.tmp").rename(repo / name)
                    done = time.perf_counter()
                    wait_until(partial(is_ready, client, name), f"{name} READY", interval=0.002)
                    times.append(time.perf_counter() - done)
                    shutil.rmtree(repo / name)
                    wait_until(partial(is_gone, client, name), f"{name} gone")
                rows.append((name, how, times))
    return rows


def swaps_under_load(swaps: int) -> dict[str, object]:
    statuses: Counter[str] = Counter()
    served: Counter[str] = Counter()
    probes: Counter[int] = Counter()
    stop = threading.Event()
    with server({"CINFER_REPOSITORY__SETTLE_MS": "500"}) as (repo, client, _):
        shutil.copytree(SAMPLES / "digits", repo / "digits")
        wait_until(partial(is_ready, client, "digits"), "digits READY")
        url = str(client.base_url)

        def send() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v2/models/digits/infer", json=DIGITS)
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                        continue
                    statuses[str(r.status_code)] += 1
                    if r.status_code == 200:
                        served[r.json()["model_version"]] += 1

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not stop.is_set():
                    probes[c.get("/v2/health/ready").status_code] += 1
                    time.sleep(0.01)

        threads = [threading.Thread(target=send) for _ in range(2)]
        threads.append(threading.Thread(target=probe))
        for t in threads:
            t.start()
        started = time.perf_counter()
        try:
            for version in range(2, swaps + 2):
                shutil.copytree(repo / "digits" / "1", repo / "digits" / f".{version}.tmp")
                (repo / "digits" / f".{version}.tmp").rename(repo / "digits" / str(version))
                wait_until(partial(served_by, served, version), f"version {version} serving")
                retired = f"model digits version {version - 1}: UNLOADING -> UNAVAILABLE"
                wait_until(partial(logged, repo, retired), f"version {version - 1} unloaded")
        finally:
            stop.set()
            for t in threads:
                t.join()
        elapsed = time.perf_counter() - started
        index = client.post("/v2/repository/index").json()
    total = sum(statuses.values())
    return {
        "swaps": swaps,
        "seconds": elapsed,
        "requests": total,
        "failed": total - statuses["200"],
        "statuses": dict(statuses),
        "probes": sum(probes.values()),
        "probes_not_200": sum(n for code, n in probes.items() if code != 200),
        "index": index,
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_over_cycles(cycles: int, source: Path, body: dict[str, object]) -> list[int]:
    """VmRSS (KiB) of the server after each load / infer / unload cycle."""
    model = source.name
    points = []
    with server({"CINFER_REPOSITORY__MODE": "explicit"}) as (repo, client, pid):
        shutil.copytree(source, repo / model)
        for cycle in range(1, cycles + 1):
            assert client.post(f"/v2/repository/models/{model}/load").status_code == 200
            assert client.post(f"/v2/models/{model}/infer", json=body).status_code == 200
            assert client.post(f"/v2/repository/models/{model}/unload").status_code == 200
            wait_until(partial(logged, repo, "engines closed", cycle), f"unload {cycle} done")
            points.append(rss_kib(pid))
    return points


def big_model(folder: Path) -> tuple[Path, dict[str, object]]:
    """A 34 MB dense model (8 x 1024x1024 FP32 weights), so a leaked session would show."""
    from tests.onnx_models import dense, model_folder

    built = dense(folder / "built" / "model.onnx", width=1024, layers=8)
    source = model_folder(folder, "dense34mb", 'engine = "onnxruntime"\n', {1: built})
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1024], "data": [1.0] * 1024}]
    }
    return source, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument(
        "--parts", default="copy,swaps,rss", help="comma-separated: copy, swaps, rss"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if "copy" in parts:
        print("\n### Copy to READY (seconds, from the end of the copy)\n")
        print("| model | publish | settle_ms | median | min | max |")
        print("|---|---|---:|---:|---:|---:|")
        for settle in (500, 0):
            for name, how, times in copy_to_ready(args.runs, settle):
                print(
                    f"| {name} | {how} | {settle} | {statistics.median(times):.3f} "
                    f"| {min(times):.3f} | {max(times):.3f} |"
                )
    if "swaps" in parts:
        result = swaps_under_load(args.swaps)
        print(f"\n### {args.swaps} version swaps under continuous load (digits, 2 clients)\n")
        print("| swaps | seconds | requests | failed | readiness probes | probes not 200 |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(
            f"| {result['swaps']} | {result['seconds']:.1f} | {result['requests']} "
            f"| {result['failed']} | {result['probes']} | {result['probes_not_200']} |"
        )
        print(f"\nstatuses: {result['statuses']}; index after: {result['index']}")
    if "rss" in parts:
        print(f"\n### RSS over {args.cycles} load / infer / unload cycles (explicit mode)\n")
        arenas = os.environ.get("MALLOC_ARENA_MAX", "glibc default")
        print(f"MALLOC_ARENA_MAX: {arenas}\n")
        print(
            f"| model | file | RSS after cycle 1 | after cycle {args.cycles} | change "
            "| highest (cycle) |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory(prefix="cinfer-big-") as tmp:
            big, big_body = big_model(Path(tmp))
            models = [(SAMPLES / "digits", DIGITS), (SAMPLES / "iris", IRIS), (big, big_body)]
            for source, body in models:
                points = rss_over_cycles(args.cycles, source, body)
                size = sum(f.stat().st_size for f in source.rglob("*.onnx"))
                first, last, high = points[0], points[-1], max(points)
                print(
                    f"| {source.name} | {size / 1024:,.1f} KiB | {first / 1024:.1f} MiB "
                    f"| {last / 1024:.1f} MiB | {100 * (last - first) / first:+.1f}% "
                    f"| {100 * (high - first) / first:+.1f}% ({points.index(high) + 1}) |"
                )


if __name__ == "__main__":
    main()
