"""Do async jobs leave synchronous requests alone? Sync latency on a model with and without
1,000 jobs queued on it (docs/performance.md, "Async jobs (issue 15)").

    .venv/bin/python tools/measure_jobs.py [--jobs 1000] [--seconds 8] [--rounds 3]

One server (jobs on, a temporary database) over the peers' overhead-bound `tiny` model
(../shared/peers/compare.sh writes it under $PEERS_HOME, default /tmp/cinfer-peers). Each
round measures three loads on `tiny`'s infer URL, JSON bodies, first with no job anywhere
(idle), then with `--jobs` jobs queued on the same model:

- closed loop, concurrency 1 and 8 (wrk, one thread): a request follows its answer;
- open loop, 100 requests/s (tools/bench.py, three windows of --seconds / 2): requests on
  a schedule, with gaps the jobs may fill.

To queue the jobs, a wrk load keeps the model busy (so the runner holds them back) while they
are submitted; the measurement starts as that load stops. The jobs finished during each
measurement are counted: how much the jobs got done while yielding. Needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_body.lua"
PEERS = Path(os.environ.get("PEERS_HOME", "/tmp/cinfer-peers"))
LOADS = ("c=1", "c=8", "100/s")
JSON = {"content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, body: Path, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(LUA), url],
        env={**os.environ, "BODY": str(body), "CTYPE": "application/json", "HDRLEN": ""},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    fields = dict(field.split("=") for field in line.split()[1:])
    return {"rps": float(fields["rps"]), "p50_us": float(fields["p50_us"]),
            "p99_us": float(fields["p99_us"]), "errors": float(fields["non2xx"])}  # fmt: skip


def paced(base: str, seconds: float, report: Path) -> dict[str, float]:
    """tools/bench.py at 100 requests/s: its p50 and p99 over three windows."""
    subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "bench.py"), "-m", "tiny", "-u", base,
         "--request-rate-range", "100:100:1", "--format", "json", "-p",
         str(int(seconds * 1000 / 2)), "--max-trials", "3", "-f", str(report)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    with open(report) as f:
        row = next(csv.DictReader(f))
    return {"rps": float(row["Inferences/Second"]), "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"]), "errors": 0.0}  # fmt: skip


def measure(load: str, base: str, body: Path, seconds: float, report: Path) -> dict[str, float]:
    infer = f"{base}/v2/models/tiny/infer"
    if load == "100/s":
        return paced(base, seconds, report)
    return wrk(infer, body, int(load.removeprefix("c=")), seconds)


async def submit(base: str, body: bytes, count: int) -> float:
    """Submit `count` jobs, 16 at a time; how long it took."""
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        gate = asyncio.Semaphore(16)

        async def one() -> None:
            async with gate:
                response = await client.post("/v2/models/tiny/jobs", content=body, headers=JSON)
                assert response.status_code == 202, response.text

        await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - start


def succeeded(database: Path) -> int:
    """Jobs that have succeeded so far, read from the jobs database itself (WAL: a reader
    beside the server's writer), so that counting costs the server nothing."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (count,) = conn.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()
    return int(count)


def fill(base: str, body: Path, payload: bytes, count: int) -> float:
    """Queue `count` jobs on tiny while a wrk load holds them back; the submission's time."""
    holder = subprocess.Popen(
        ["wrk", "-t1", "-c1", "-d60s", "-s", str(LUA), f"{base}/v2/models/tiny/infer"],
        env={**os.environ, "BODY": str(body), "CTYPE": "application/json", "HDRLEN": ""},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)  # wrk connected and sending
        return asyncio.run(submit(base, payload, count))
    finally:
        holder.terminate()
        holder.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "repo-ours" / "tiny").is_dir():
        sys.exit("needs wrk and the peers' tiny model: run ../shared/peers/compare.sh once")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        shutil.copytree(PEERS / "repo-ours" / "tiny", root / "tiny")
        body = PEERS / "tiny.json"
        payload = body.read_bytes()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ, "CINFER_AUTH__ENABLED": "false", "CINFER_CONSOLE__ENABLED": "false",
            "CINFER_JOBS__ENABLED": "true", "CINFER_JOBS__DATABASE": f"{tmp}/db/jobs.db",
            "CINFER_JOBS__MAX_QUEUED_PER_TOKEN": str(10 * args.jobs),
        }  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--repository", str(root), "--port", str(port)],
            cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            ready(base)
            wrk(f"{base}/v2/models/tiny/infer", body, 8, 2)  # warm-up
            runs = run(base, body, payload, args, Path(tmp))
        finally:
            server.terminate()
            server.wait()
    report(runs, args)


def run(base: str, body: Path, payload: bytes, args: argparse.Namespace, tmp: Path) -> dict:
    csv_path, database = tmp / "bench.csv", tmp / "db" / "jobs.db"
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for load in LOADS:
            idle = measure(load, base, body, args.seconds, csv_path)
            runs.setdefault((load, "idle"), []).append(idle)
            took = fill(base, body, payload, args.jobs)
            before = succeeded(database)
            busy = measure(load, base, body, args.seconds, csv_path)
            busy["jobs_done"] = succeeded(database) - before
            busy["submit_s"] = took
            runs.setdefault((load, "jobs"), []).append(busy)
            print(f"round {round_ + 1} {load}: idle p99 {idle['p99_us']:.0f} us, with jobs "
                  f"{busy['p99_us']:.0f} us ({busy['jobs_done']:.0f} jobs done meanwhile)",
                  file=sys.stderr)  # fmt: skip
            # Let the rest of the queue drain before the next idle measurement.
            wait_drained(database)
    return runs


def wait_drained(database: Path) -> None:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        while conn.execute("SELECT 1 FROM jobs WHERE state != 'succeeded' LIMIT 1").fetchone():
            time.sleep(0.2)


def report(runs: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.jobs} jobs queued on tiny, {args.rounds} rounds, medians "
          f"(p99 per round in brackets)\n")  # fmt: skip
    print(
        "| load on tiny (JSON) | idle p50 us | idle p99 us | with jobs p50 us | with jobs "
        "p99 us | p99 ratio | sync req/s idle / with jobs | jobs done meanwhile |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for load in LOADS:
        idle, busy = runs[(load, "idle")], runs[(load, "jobs")]

        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median(r[key] for r in rows)

        per = lambda rows: ", ".join(f"{r['p99_us']:.0f}" for r in rows)  # noqa: E731
        ratio = med(busy, "p99_us") / med(idle, "p99_us")
        print(f"| {load} | {med(idle, 'p50_us'):.0f} | {med(idle, 'p99_us'):.0f} ({per(idle)}) "
              f"| {med(busy, 'p50_us'):.0f} | {med(busy, 'p99_us'):.0f} ({per(busy)}) "
              f"| **{ratio:.2f}** | {med(idle, 'rps'):,.0f} / {med(busy, 'rps'):,.0f} "
              f"| {med(busy, 'jobs_done'):.0f} |")  # fmt: skip
    took = [r["submit_s"] for (_, kind), rows in runs.items() if kind == "jobs" for r in rows]
    submit = statistics.median(took)
    print(f"\nSubmitting {args.jobs} jobs (16 at a time, beside a c=1 load): median {submit:.2f} s")


def ready(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("the server did not become ready")


if __name__ == "__main__":
    main()
