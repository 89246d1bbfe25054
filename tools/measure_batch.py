"""`cinfer batch` throughput on the peers' `mlp` model against onnxruntime's own limit
(docs/performance.md, "cinfer batch (issue 15)").

    .venv/bin/python tools/measure_batch.py [--rows 131072] [--rounds 5] [--instances N]
                                            [--postgres URL]

Each round runs ../shared/peers/engine_limit.py (onnxruntime alone in a tight loop, 2
intra-op threads; its `mlp batch=32` line is the limit) and then `cinfer batch mlp` in this
process over a .npy of `--rows` rows of 1024 floats into each output kind, each a fresh
output: Parquet, JSONL, CSV, SQLite and, with `--postgres`, a PostgreSQL table; with
`--instances N` (default: the model's own, 1) the run's engine instances. Rounds alternate
the two, so the machine's drift reaches both; the table gives each one's median and best
(rows/s) and their ratio to the engine limit's. The models and the repository come from
../shared/peers/make_models.py under $PEERS_HOME (default /tmp/cinfer-peers), built when
missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
SHARED = PROJECT.parent / "shared" / "peers"
PEERS = Path(os.environ.get("PEERS_HOME", "/tmp/cinfer-peers"))


def engine_limit() -> float:
    out = subprocess.run(
        [sys.executable, str(SHARED / "engine_limit.py"), str(PEERS / "models")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"engine-limit mlp batch=32 .* infer_per_s=(\d+)", out)
    assert found, out
    return float(found.group(1))


def batch(rows: Path, output: str, table: list[str], instances: int | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    result = subprocess.run(
        [sys.executable, "-m", "server", "batch", "mlp", str(rows), "--output", output, *table,
         "--repository", str(PEERS / "repo-ours"),
         *(["--instances", str(instances)] if instances else [])],
        capture_output=True, text=True, env=env, cwd=PROJECT,
    )  # fmt: skip
    found = re.search(r"rows in \S+ \(([\d,]+) rows/s\)", result.stderr)
    assert result.returncode == 0 and found, result.stderr
    return float(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--instances", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="also a PostgreSQL table here")
    args = parser.parse_args()
    if not (PEERS / "repo-ours" / "mlp").is_dir():
        subprocess.run([sys.executable, str(SHARED / "make_models.py"), str(PEERS)], check=True)
    work = Path(tempfile.mkdtemp(prefix="cinfer-measure-batch-"))
    rows = work / "mlp.npy"
    np.save(rows, np.random.default_rng(0).random((args.rows, 1024), dtype=np.float32))
    kinds = {"Parquet": "parquet", "JSONL": "jsonl", "CSV": "csv", "SQLite": "db"}
    if args.postgres:
        kinds["PostgreSQL"] = "postgresql"
    figures: dict[str, list[float]] = {"engine limit": [], **{kind: [] for kind in kinds}}
    for number in range(1, args.rounds + 1):
        load = os.getloadavg()[0]
        figures["engine limit"].append(engine_limit())
        for kind, suffix in kinds.items():
            table = ["--table", f"mlp_{os.getpid()}_{number}"] if suffix == "postgresql" else []
            output = args.postgres if suffix == "postgresql" else str(work / f"{number}.{suffix}")
            figures[kind].append(batch(rows, output, table, args.instances))
            for leftover in work.glob(f"{number}.*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        line = ", ".join(f"{name} {values[-1]:,.0f}" for name, values in figures.items())
        print(f"round {number} (load {load:.2f}): {line}", flush=True)
    limit = statistics.median(figures["engine limit"])
    best = max(figures["engine limit"])
    print("\n| mlp, batch 32 | rows/s, median | best | median / limit's | best / limit's best |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {max(values):,.0f} | {median / limit:.2f} | "
              f"{max(values) / best:.2f} |")  # fmt: skip
    rows.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
