"""The command line: read the model, build the requests, measure each level, report.

Exit status: 0 when every request succeeded; 1 when the server answered errors or the run
could not start (not a v2 server, unknown dims, ...), with the reason on stderr; 2 for a bad
command line; 130 when interrupted (what was measured is still reported).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import images, inputs, report
from .load import WorkerPool, probe
from .measure import Level, Window, is_stable
from .target import (
    BenchError,
    Endpoint,
    Model,
    ServerStats,
    describe_model,
    error_message,
    read_stats,
    server_extensions,
)

USAGE_EXAMPLES = """\
examples:
  python tools/bench.py -m digits --concurrency-range 1:8:2 -b 4
  python tools/bench.py -m tiny -u localhost:8000 --request-rate-range 500:2000:500 -f out.csv
  python tools/bench.py -m iris --shape features:8,4 --format json --plot out.png
  python tools/bench.py -m resnet --images photos/ -b 8 --format multipart
  python tools/bench.py -m tiny -i grpc -u localhost:8001 --concurrency-range 1:32:31
"""


def parse_range(text: str, kind: type[float] | type[int], option: str) -> list[float]:
    """perf_analyzer's START[:END[:STEP]] as the list of levels."""
    try:
        parts = [kind(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p <= 0 for p in parts):
        raise ValueError(f"{option} {text}: expected START[:END[:STEP]], positive numbers")
    start = parts[0]
    end = parts[1] if len(parts) > 1 else start
    step = parts[2] if len(parts) > 2 else 1
    if end < start:
        raise ValueError(f"{option} {text}: END is smaller than START")
    count = int((end - start) / step + 1e-9) + 1
    if count > 1000:
        raise ValueError(f"{option} {text}: {count} levels; use a larger STEP")
    return [float(start + i * step) for i in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Measure throughput and latency of a model on any KServe v2 HTTP server "
        "(a perf_analyzer-like load generator).",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-m", "--model-name", required=True, help="the model to measure")
    parser.add_argument("-x", "--model-version", help="its version (default: the server's)")
    parser.add_argument(
        "-u",
        "--url",
        help="host:port or http://host:port[/prefix] (default localhost:8000; with -i grpc, "
        "host:port, default localhost:8001)",
    )
    parser.add_argument(
        "-i",
        "--protocol",
        choices=["http", "grpc"],
        default="http",
        help="KServe v2 over HTTP (default) or gRPC (raw tensors; needs tritonclient[grpc])",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency-range",
        metavar="START:END:STEP",
        help="requests kept in flight (closed loop); default 1",
    )
    load.add_argument(
        "--request-rate-range",
        metavar="START:END:STEP",
        help="requests per second sent on schedule, whatever the responses (open loop)",
    )
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--input-data",
        default="random",
        metavar="zero|random|FILE.json",
        help="input values: zeros, random, or perf_analyzer's JSON data file (default random)",
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME:D1,D2",
        help="dims of an input with -1 in its shape (without the batch dim); repeatable",
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="send the image files of DIR (jpg, png, webp, bmp, gif, tiff), in turn, as the "
        "model's BYTES input; -b files per request",
    )
    parser.add_argument(
        "--image-input",
        metavar="NAME",
        help="the input --images fills, when the model has several BYTES inputs",
    )
    parser.add_argument(
        "--format",
        choices=["binary", "json", "multipart"],
        default="binary",
        help="binary tensors (default), JSON (servers without binary tensors: MLServer; files "
        "as base64), or multipart/form-data (--images only: one file part per image)",
    )
    parser.add_argument(
        "-p",
        "--measurement-interval",
        type=int,
        default=5000,
        metavar="MS",
        help="length of a measurement window (default 5000 ms)",
    )
    parser.add_argument(
        "--percentile",
        type=int,
        metavar="N",
        help="decide stability on the N-th latency percentile instead of the average",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=10,
        metavar="N",
        help="windows per level before giving up on stability (default 10)",
    )
    parser.add_argument(
        "-s",
        "--stability-percentage",
        type=float,
        default=10.0,
        metavar="PCT",
        help="how far (±%%) three windows may differ and still be stable (default 10)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar='"Name: value"',
        help="an HTTP header on every request (e.g. Authorization); repeatable",
    )
    parser.add_argument("-f", "--latency-report-file", metavar="FILE.csv", help="CSV output")
    parser.add_argument("--plot", metavar="FILE.png", help="PNG of latency vs throughput")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="load processes (default 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.request_rate_range:
            mode = "rate"
            levels = parse_range(args.request_rate_range, float, "--request-rate-range")
        else:
            mode = "concurrency"
            levels = parse_range(args.concurrency_range or "1", int, "--concurrency-range")
        shapes = dict(inputs.parse_shape_option(s) for s in args.shape)
        headers = [inputs.parse_header_option(h) for h in args.header]
    except ValueError as exc:
        parser.error(str(exc))
    for option, value, low in (
        ("-b", args.batch_size, 1),
        ("--measurement-interval", args.measurement_interval, 10),
        ("--max-trials", args.max_trials, 3),
        ("--workers", args.workers, 1),
    ):
        if value < low:
            parser.error(f"{option} must be at least {low}, got {value}")
    if args.percentile is not None and not 0 < args.percentile < 100:
        parser.error(f"--percentile must be between 1 and 99, got {args.percentile}")
    if not args.images and args.format == "multipart":
        parser.error("--format multipart sends image files: it needs --images DIR")
    if not args.images and args.image_input:
        parser.error("--image-input names the input --images fills: it needs --images DIR")
    if args.images and args.input_data not in ("zero", "random"):
        parser.error(
            f"--images gives the data of the image input; --input-data {args.input_data} "
            "cannot be combined with it (zero or random fill the model's other inputs)"
        )
    if args.protocol == "grpc":
        unsupported = [
            option for option, used in (("--images", args.images),
                                        ("--format", args.format != "binary")) if used
        ]  # fmt: skip
        if unsupported:
            parser.error(f"-i grpc sends raw tensors: {', '.join(unsupported)} is HTTP only")
        if args.url and "://" in args.url:
            parser.error(f"-i grpc takes host:port, got {args.url}")
    try:
        if args.protocol == "grpc":
            return run_grpc(args, mode, levels, shapes, headers)
        return run(args, mode, levels, shapes, headers)
    except BenchError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 1


@dataclass
class Plan:
    """What a run sends, found before it starts."""

    model: Model
    requests: list[inputs.Request]
    """One per distinct request, in the order the load sends them (and round again)."""
    stats: bool
    """Whether the server answers the statistics extension."""
    described: str
    """The inputs in words."""
    images: int | None = None
    """Image files per request, with --images."""


def prepare(
    args: argparse.Namespace, endpoint: Endpoint, shapes: dict[str, tuple[int, ...]]
) -> Plan:
    """The model and its requests, from the server's metadata and the options."""
    files = images.read_folder(Path(args.images)) if args.images else None
    extensions = server_extensions(endpoint)
    model = describe_model(endpoint, args.model_name, args.model_version)
    if args.format == "binary" and "binary_tensor_data" not in extensions:
        print(
            "bench.py: warning: the server does not list the binary_tensor_data extension; "
            "if requests fail, use --format json",
            file=sys.stderr,
        )
    stats = "statistics" in extensions and try_stats(endpoint, model) is not None
    if files is not None:
        return prepare_images(args, endpoint, model, shapes, files, stats)
    if args.input_data in ("zero", "random"):
        rng = np.random.default_rng(0)
        full = inputs.resolve_shapes(model, args.batch_size, shapes)
        entries = [
            {
                t.name: inputs.generate(t.datatype, full[t.name], args.input_data, rng)
                for t in model.inputs
            }
        ]
    else:
        entries = inputs.load_data_file(Path(args.input_data), model, args.batch_size, shapes)
    requests = inputs.build_requests(endpoint, model, entries, args.format == "binary")
    described = ", ".join(
        f"{t.name} {t.datatype} {list(entries[0][t.name].shape)}" for t in model.inputs
    )
    if len(entries) > 1:
        described += f" ({len(entries)} data entries, in turn)"
    return Plan(model, requests, stats, described)


def prepare_images(
    args: argparse.Namespace,
    endpoint: Endpoint,
    model: Model,
    shapes: dict[str, tuple[int, ...]],
    files: list[images.ImageFile],
    stats: bool,
) -> Plan:
    """--images: the files in the image input, the other inputs zero or random."""
    tensor = images.image_input(model, args.image_input)
    full = inputs.resolve_shapes(model, args.batch_size, shapes)
    rng = np.random.default_rng(0)
    others = {
        t.name: inputs.generate(t.datatype, full[t.name], args.input_data, rng)
        for t in model.inputs
        if t.name != tensor.name
    }
    shape = full[tensor.name]
    requests = images.image_requests(endpoint, model, tensor, files, shape, args.format, others)
    count = int(np.prod(shape))
    words = {t.name: f"{t.name} {t.datatype} {list(full[t.name])}" for t in model.inputs}
    words[tensor.name] += f" ({len(files)} image files from {args.images}, {count} per request)"
    described = ", ".join(words.values())
    if len(requests) > 1:
        described += f"; {len(requests)} distinct requests, in turn"
    return Plan(model, requests, stats, described, count)


def try_stats(endpoint: Endpoint, model: Model) -> ServerStats | None:
    """The server's statistics now, or None with a warning: they are optional to a run."""
    try:
        return read_stats(endpoint, model)
    except BenchError as exc:
        print(f"bench.py: warning: no server-side times: {exc}", file=sys.stderr)
        return None


def check_response(body: bytes) -> None:
    """BenchError unless `body` starts with a v2 inference response (JSON, or its header)."""
    try:
        # A binary response is the JSON header followed by raw bytes: decode the first value.
        answer, _ = json.JSONDecoder().raw_decode(body.decode("latin-1"))
        if isinstance(answer, dict) and isinstance(answer.get("outputs"), list):
            return
    except ValueError:
        pass
    raise BenchError(
        f"the server answered the infer request with 2xx, but not with a v2 inference response "
        f"(no 'outputs'): {body[:120]!r}"
    )


def run(
    args: argparse.Namespace,
    mode: str,
    levels: list[float],
    shapes: dict[str, tuple[int, ...]],
    headers: list[tuple[str, str]],
) -> int:
    if args.plot:
        report.check_plotting()
    endpoint = Endpoint.parse(args.url or "localhost:8000", headers)
    plan = prepare(args, endpoint, shapes)
    model, requests, stats = plan.model, plan.requests, plan.stats

    def check(index: int, status: int, body: bytes) -> None:
        label = requests[index].label
        what = f"the infer request ({label})" if label else "the infer request"
        if not 200 <= status < 300:
            raise BenchError(f"the server refused {what} with HTTP {status}: {error_message(body)}")
        check_response(body)

    try:
        address = probe((endpoint.host, endpoint.port), [r.wire for r in requests], check)
    except OSError as exc:
        raise BenchError(f"cannot send an infer request to {endpoint.base}: {exc}") from None
    version = f" version {model.version}" if model.version else ""
    sizes = sorted(r.body_size for r in requests)
    size = f"{sizes[0]:,}" if sizes[0] == sizes[-1] else f"{sizes[0]:,} to {sizes[-1]:,}"
    print(
        f"bench.py: model '{model.name}'{version} at {endpoint.base}: {plan.described}; "
        f"{args.format} requests of {size} bytes, batch {args.batch_size}; "
        f"{args.workers} load worker(s); server statistics: {'yes' if stats else 'not offered'}",
        file=sys.stderr,
    )
    tolerance = args.stability_percentage / 100
    progress = report.Progress(mode, args.max_trials, args.percentile)
    results: list[Level] = []
    interrupted = aborted = False
    pool = WorkerPool(
        args.workers, address, [r.wire for r in requests], [r.body_size for r in requests]
    )
    try:
        for value in levels:
            progress.start_level(value)
            level, aborted, interrupted = measure_level(
                pool, endpoint, model, mode, value, args, stats, tolerance, progress
            )
            if level is not None:
                results.append(level)
                progress.end_level(level)
            if aborted or interrupted:
                break
    except KeyboardInterrupt:  # between levels
        interrupted = True
    finally:
        progress.close()
        pool.close()
        endpoint.close()
    return finish(args, mode, plan, results, interrupted, aborted)


def run_grpc(
    args: argparse.Namespace,
    mode: str,
    levels: list[float],
    shapes: dict[str, tuple[int, ...]],
    headers: list[tuple[str, str]],
) -> int:
    """-i grpc: the model over ModelMetadata, raw-tensor ModelInfer load (grpc_load.py)."""
    from . import grpc_load

    address = args.url or "localhost:8001"
    model = grpc_load.describe(address, args.model_name, args.model_version, headers)
    if args.input_data in ("zero", "random"):
        rng = np.random.default_rng(0)
        full = inputs.resolve_shapes(model, args.batch_size, shapes)
        entries = [
            {
                t.name: inputs.generate(t.datatype, full[t.name], args.input_data, rng)
                for t in model.inputs
            }
        ]
    else:
        entries = inputs.load_data_file(Path(args.input_data), model, args.batch_size, shapes)
    requests = grpc_load.build(model, entries)
    grpc_load.probe(address, requests, headers)
    described = ", ".join(
        f"{t.name} {t.datatype} {list(entries[0][t.name].shape)}" for t in model.inputs
    )
    print(
        f"bench.py: model '{model.name}' at grpc://{address}: {described}; raw ModelInfer "
        f"requests of {len(requests[0]):,} bytes, batch {args.batch_size}; "
        f"{args.workers} load worker(s); server statistics: not read over gRPC",
        file=sys.stderr,
    )
    plan = Plan(model, [inputs.Request(b"", len(r)) for r in requests], False, described)
    tolerance = args.stability_percentage / 100
    progress = report.Progress(mode, args.max_trials, args.percentile)
    results: list[Level] = []
    interrupted = aborted = False
    pool = WorkerPool(
        args.workers, address, requests, [list(h) for h in headers], grpc_load.grpc_worker_main
    )
    try:
        for value in levels:
            progress.start_level(value)
            level, aborted, interrupted = measure_level(
                pool, None, model, mode, value, args, False, tolerance, progress
            )
            if level is not None:
                results.append(level)
                progress.end_level(level)
            if aborted or interrupted:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        pool.close()
    return finish(args, mode, plan, results, interrupted, aborted)


def measure_level(
    pool: WorkerPool,
    endpoint: Endpoint | None,
    model: Model,
    mode: str,
    value: float,
    args: argparse.Namespace,
    stats: bool,
    tolerance: float,
    progress: report.Progress,
) -> tuple[Level | None, bool, bool]:
    """Windows at one level until stable or the cap: (result, every request failed, Ctrl-C).

    Interrupted, the result holds the windows measured so far (None if there were none).
    """
    interval = args.measurement_interval / 1000
    windows: list[Window] = []
    before = try_stats(endpoint, model) if stats and endpoint is not None else None
    pool.start(mode, value)
    stable = aborted = interrupted = False
    try:
        while len(windows) < args.max_trials:
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.1))
                progress.tick(len(windows) + 1 - max(left, 0) / interval)
            samples = pool.sample()
            server = None
            if before is not None and endpoint is not None:
                after = try_stats(endpoint, model)
                server = None if after is None else after - before
                before = after
            window = Window.merge(samples, args.batch_size, server)
            windows.append(window)
            stable = is_stable(windows, args.percentile, tolerance)
            progress.window(len(windows), window, stable)
            if window.error_count and not window.successes:
                aborted = True  # nothing is being measured: stop and report the errors
                break
            if stable:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tail = pool.stop()
    if not windows:
        return None, aborted, interrupted
    rest = Window.merge(tail, args.batch_size, None)
    return Level.of(value, windows, stable, args.percentile, rest), aborted, interrupted


def finish(
    args: argparse.Namespace,
    mode: str,
    plan: Plan,
    results: list[Level],
    interrupted: bool,
    aborted: bool,
) -> int:
    if results:
        report.print_table(mode, results, args.percentile, plan.stats, sys.stdout, plan.images)
        sys.stdout.flush()
        if args.latency_report_file:
            report.write_csv(Path(args.latency_report_file), mode, results, plan.images)
        if args.plot:
            title = f"{plan.model.name} (batch {args.batch_size})"
            report.plot(Path(args.plot), mode, results, title)
    totals = report.totals_line(results, args.batch_size, plan.images, len(plan.requests))
    print(f"bench.py: {totals}", file=sys.stderr)
    for line in report.warnings(mode, results, args.measurement_interval):
        print(f"bench.py: warning: {line}", file=sys.stderr)
    errors = sum(level.error_count for level in results)
    if errors:
        print(f"bench.py: {errors} request(s) failed:", file=sys.stderr)
        for line in report.error_lines(results, mode):
            print(f"  {line}", file=sys.stderr)
        if aborted:
            print("bench.py: stopped: every request of a window failed", file=sys.stderr)
    if interrupted:
        print("bench.py: interrupted", file=sys.stderr)
        return 130
    return 1 if errors else 0
