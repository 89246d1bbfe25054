"""What the response cache gives and costs, measured with wrk (docs/performance.md,
"Response cache (issue 16)").

    .venv/bin/python tools/measure_cache.py [--seconds 5] [--rounds 5] [-c 32]

One server (local cache, the default 256 MiB) over a temporary repository holding the
peers' `tiny` model twice: `tiny_cached` with ``[cache] enabled = true`` and `tiny` without
(../shared/peers/compare.sh writes it under $PEERS_HOME, default /tmp/cinfer-peers). Four
loads, alternating round by round, binary tensors at `-c` connections:

- hit: the same body again and again to `tiny_cached` (../shared/peers/wrk_infer.lua): every
  request after the first answered from the cache;
- uncached: the same body to `tiny`: every request run by the engine;
- miss: a body that differs in every request (tools/wrk_vary.lua) to `tiny_cached`: every
  request looked up, run and stored;
- off: the same varying bodies to `tiny`.

It prints every round and the medians (infer/s, and the server's CPU time per answered
request, all its threads), with hit / uncached and miss / off.
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
FIXED = PROJECT.parent / "shared" / "peers" / "wrk_infer.lua"
VARY = Path(__file__).resolve().parent / "wrk_vary.lua"
LOADS = {  # name -> (model, wrk script)
    "hit": ("tiny_cached", FIXED),
    "uncached": ("tiny", FIXED),
    "miss": ("tiny_cached", VARY),
    "off": ("tiny", VARY),
}


def wrk(url: str, script: Path, connections: int, seconds: int) -> float:
    body = PEERS / "tiny.bin"
    env = {**os.environ, "BODY": str(body), "HDRLEN": (PEERS / "tiny.binhdr").read_text().strip()}
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    fields = dict(p.split("=") for p in line.split()[1:])
    if fields["errors"] != "0" or fields["non2xx"] != "0":
        sys.exit(f"failed requests: {line}")
    return float(fields["rps"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("--loads", default=",".join(LOADS), help="which loads, comma-separated")
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (PEERS / "repo-ours" / "tiny").is_dir():
        sys.exit("needs wrk and the peers' tiny model: run ../shared/peers/compare.sh once")
    with tempfile.TemporaryDirectory(prefix="cinfer-cache-") as tmp:
        root = Path(tmp) / "repository"
        shutil.copytree(PEERS / "repo-ours" / "tiny", root / "tiny")
        shutil.copytree(PEERS / "repo-ours" / "tiny", root / "tiny_cached")
        toml = root / "tiny_cached" / "model.toml"
        toml.write_text(toml.read_text() + "\n[cache]\nenabled = true\n")
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
                    with urllib.request.urlopen(f"{base}/v2/models/tiny_cached/ready") as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not get ready")
                time.sleep(0.1)
            for model, script in LOADS.values():  # warm-up: one second each
                wrk(f"{base}/v2/models/{model}/infer", script, args.connections, 1)
            loads = {name: LOADS[name] for name in args.loads.split(",")}
            results: dict[str, list[float]] = {name: [] for name in loads}
            cpu: dict[str, list[float]] = {name: [] for name in loads}
            for round_ in range(args.rounds):
                for name, (model, script) in loads.items():
                    url = f"{base}/v2/models/{model}/infer"
                    before = cpu_seconds(server.pid)
                    rps = wrk(url, script, args.connections, args.seconds)
                    used = cpu_seconds(server.pid) - before
                    results[name].append(rps)
                    cpu[name].append(used / max(rps * args.seconds, 1) * 1e6)
                line = ", ".join(
                    f"{n} {v[-1]:,.0f} ({cpu[n][-1]:.0f} us)" for n, v in results.items()
                )
                print(f"round {round_ + 1}: {line}", flush=True)
            medians = {name: statistics.median(values) for name, values in results.items()}
            ratios = [
                (a, b) for a, b in (("hit", "uncached"), ("miss", "off")) if {a, b} <= set(loads)
            ]
            heads = [*loads, *(f"{a} / {b}" for a, b in ratios)]
            print(f"\n| tiny binary c={args.connections} | " + " | ".join(heads) + " |")
            print("| --- " * (len(heads) + 1) + "|")
            cells = [f"{medians[n]:,.0f}, {statistics.median(cpu[n]):.0f} us" for n in loads]
            cells += [f"**{medians[a] / medians[b]:.2f}**" for a, b in ratios]
            print(
                f"| median of {args.rounds}: infer/s, server CPU per request | "
                + " | ".join(cells)
                + " |"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
