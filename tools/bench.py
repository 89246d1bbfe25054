"""A perf_analyzer-like benchmark for any KServe v2 HTTP server (Cinfer, Triton, MLServer).

    python tools/bench.py -m MODEL [-x VERSION] [-u URL]
        [--concurrency-range START:END:STEP | --request-rate-range START:END:STEP]
        [-b BATCH] [--input-data zero|random|FILE.json] [--shape NAME:D1,D2]
        [--images DIR [--image-input NAME]] [--format binary|json|multipart]
        [--measurement-interval MS] [--percentile N]
        [-H "Header: value"] [-f out.csv] [--plot out.png] [--workers N]

A standalone tool: it talks to the server over HTTP only and imports nothing from `server`.
The code is in tools/benchkit/ (target: the server and the model; inputs: the requests;
images: image files as the data; connection and load: the load generators; measure:
windows and stability; report: output).
See docs/bench.md.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Imported here, not above: load workers are spawned processes that import this file
    # as __mp_main__, and they need only benchkit.load, not the whole command line.
    from benchkit.cli import main

    sys.exit(main())
