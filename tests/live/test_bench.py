"""tools/bench.py: the real command against a real server, and its parts on known inputs.

Each run is kept short (windows of 200 ms, at most 3 per level) so the file stays well under
a minute on two loaded cores; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from server.http.codec import decode_request
from tests import onnx_models
from tests.live import ROOT, free_port, live_server, wait_until
from tools.benchkit import images, inputs, report
from tools.benchkit.cli import check_response, main, parse_range
from tools.benchkit.connection import HTTPConnection
from tools.benchkit.load import Sample
from tools.benchkit.measure import Level, Window, is_stable
from tools.benchkit.report import BYTES_COLUMNS, CSV_COLUMNS
from tools.benchkit.target import BenchError, Endpoint, Model, ServerStats, Tensor

BENCH = ROOT / "tools" / "bench.py"
QUICK = ["--measurement-interval", "200", "--max-trials", "3"]
PHOTOS = """engine = "onnxruntime"
max_batch_size = 8

[images.INPUT0]
color = "rgb"
size = [6, 8]
resize = "stretch"
layout = "NCHW"
"""
TOTALS = re.compile(
    r"sent ([\d,]+) requests, ([\d,]+) succeeded \(([\d,]+) inferences\); ([\d,]+) body bytes, "
    r"([\d,.]+) per request(?:, ([\d,.]+) per image)?; and ([\d,]+) before measuring"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("bench") / "models"
    root.mkdir()
    onnx_models.copy_samples(root)
    # A -1 dim after the batch dim: bench.py needs --shape for it.
    onnx_models.identity(root / "varwidth" / "1" / "model.onnx", "FP32", ["batch", "width"])
    (root / "varwidth" / "model.toml").write_text('engine = "onnxruntime"\nmax_batch_size = 8\n')
    # One instance, a slow model and a queue of one: concurrent requests overflow it (503).
    onnx_models.dense(root / "overflow" / "1" / "model.onnx", width=512, layers=8)
    (root / "overflow" / "model.toml").write_text(
        'engine = "onnxruntime"\nmax_batch_size = 1\n\n[batching]\nmax_queue_size = 1\n'
        "\n[parameters]\nintra_op_threads = 1\n"
    )
    # An image input (the identity shows what the server made of each file).
    built = onnx_models.identity(root.parent / "built" / "model.onnx", "FP32", ["batch", 3, 6, 8])
    onnx_models.model_folder(root, "photos", PHOTOS, {1: built})
    with live_server(root) as (url, _):
        yield url


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def has_statistics(url: str) -> bool:
    return "statistics" in httpx.get(f"{url}/v2").json()["extensions"]


def served(url: str, model: str) -> tuple[int, int]:
    """The server's own (successful requests, inference_count) of `model`."""
    [entry] = httpx.get(f"{url}/v2/models/{model}/stats").json()["model_stats"]
    return entry["inference_stats"]["success"]["count"], entry["inference_count"]


def totals(stderr: str) -> dict[str, float]:
    """bench.py's closing line: every request it sent, and the bytes of their bodies."""
    match = TOTALS.search(stderr)
    assert match is not None, stderr
    names = ("sent", "succeeded", "inferences", "bytes", "per_request", "per_image", "checked")
    return {k: float(v.replace(",", "")) for k, v in zip(names, match.groups()) if v}


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real image files (and what --images must pass over: another file, a folder)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    pixels = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    (folder / "a.png").write_bytes(encoded(Image.fromarray(pixels(6, 8)), "PNG"))
    (folder / "b.JPG").write_bytes(encoded(Image.fromarray(pixels(23, 37)), "JPEG"))
    (folder / "c.png").write_bytes(encoded(Image.fromarray(pixels(29, 13)[:, :, 0]), "PNG"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "more.png").mkdir()
    return folder


def expected_body(fmt: str, files: list[Path]) -> bytes:
    """A request body carrying `files` as tritonclient, a JSON client and httpx write it."""
    data = [f.read_bytes() for f in files]
    if fmt == "binary":
        tensor = triton.InferInput("INPUT0", [len(data)], "BYTES")
        tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=True)
        wanted = [triton.InferRequestedOutput("OUTPUT0", binary_data=True)]
        body, _ = triton.InferenceServerClient.generate_request_body([tensor], outputs=wanted)
        return bytes(body)
    if fmt == "json":
        entry = {"name": "INPUT0", "shape": [len(data)], "datatype": "BYTES",
                 "parameters": {"content_type": "base64"},
                 "data": [base64.b64encode(d).decode() for d in data]}  # fmt: skip
        return json.dumps({"inputs": [entry]}, separators=(",", ":")).encode()
    kinds = {".png": "image/png", ".jpg": "image/jpeg"}
    form = [("INPUT0", (f.name, d, kinds[f.suffix.lower()])) for f, d in zip(files, data)]
    content_type = f"multipart/form-data; boundary={images.BOUNDARY}"
    return httpx.Request(
        "POST", "http://x/", files=form, headers={"Content-Type": content_type}
    ).read()


# -- the command against the live server ------------------------------------------------


def test_concurrency_mode_writes_perf_analyzer_csv_and_plot(server: str, tmp_path: Path) -> None:
    out, png = tmp_path / "out.csv", tmp_path / "out.png"
    result = bench("-m", "digits", "-u", server, "--concurrency-range", "1:3:2", "-b", "2",
                   "-f", str(out), "--plot", str(png), *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "image FP32 [2, 64]" in result.stderr
    header, rows = read_csv(out)
    assert header == ["Concurrency", *CSV_COLUMNS, "Avg Request Bytes"]
    assert sorted(r["Concurrency"] for r in rows) == ["1", "3"]
    # Every request is the same: its size, as the start line gives it, is the mean.
    size = re.search(r"binary requests of ([\d,]+) bytes", result.stderr)
    assert size is not None, result.stderr
    body = int(size[1].replace(",", ""))
    assert body > 2 * 64 * 4  # the header, then two rows of 64 FP32
    assert {int(r["Avg Request Bytes"]) for r in rows} == {body}
    counted = totals(result.stderr)
    assert counted["sent"] == counted["succeeded"] > 0
    assert counted["bytes"] == counted["sent"] * body
    throughputs = [float(r["Inferences/Second"]) for r in rows]
    assert throughputs == sorted(throughputs)  # perf_analyzer orders rows by throughput
    for row in rows:
        assert float(row["Inferences/Second"]) > 0
        p = [int(row[f"p{n} latency"]) for n in (50, 90, 95, 99)]
        assert 0 < p[0] <= p[1] <= p[2] <= p[3]
        assert int(row["Avg latency"]) > 0
        assert int(row["request/response"]) == pytest.approx(
            int(row["Client Send"]) + int(row["Client Recv"]), abs=1
        )
        # Server-side columns are filled exactly when the server offers statistics.
        assert (int(row["Server Compute Infer"]) > 0) == has_statistics(server)
    assert result.stdout.splitlines()[0].split()[:3] == ["Concurrency", "infer/s", "bytes/req"]


def test_request_rate_mode_keeps_the_schedule(server: str, tmp_path: Path) -> None:
    out = tmp_path / "rate.csv"
    result = bench("-m", "digits", "-u", server, "--request-rate-range", "100:200:100",
                   "-f", str(out), *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, rows = read_csv(out)
    assert header == ["Request Rate", *CSV_COLUMNS, "Avg Request Bytes"]
    for row in rows:
        target = float(row["Request Rate"])
        # Open loop: the server answers far faster than 200/s, so it sees the target rate.
        assert float(row["Inferences/Second"]) == pytest.approx(target, rel=0.25)
    assert "delayed" in result.stdout


def test_workers_split_the_load_and_merge_their_results(server: str) -> None:
    result = bench("-m", "digits", "-x", "1", "-u", server, "--concurrency-range", "4",
                   "--workers", "2", "--format", "json", *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "model 'digits' version 1 at" in result.stderr and "2 load worker(s)" in result.stderr
    row = result.stdout.splitlines()[1].split()
    assert row[0] == "4" and float(row[1].replace(",", "")) > 0


@pytest.mark.parametrize("fmt", ["binary", "json", "multipart"])
def test_images_go_in_turn_and_the_server_counts_what_bench_reports(
    server: str, photos: Path, fmt: str, tmp_path: Path
) -> None:
    out = tmp_path / "images.csv"
    before = served(server, "photos")
    result = bench("-m", "photos", "-u", server, "--images", str(photos), "-b", "2",
                   "--format", fmt, "--concurrency-range", "2", "-f", str(out), *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        f"INPUT0 BYTES [2] (3 image files from {photos}, 2 per request); 3 distinct requests, "
        f"in turn; {fmt} requests of" in result.stderr
    )
    counted = totals(result.stderr)
    assert counted["sent"] == counted["succeeded"] > 0  # no errors, none lost
    assert counted["inferences"] == 2 * counted["succeeded"]
    assert counted["checked"] == 3
    # The server saw every request bench.py sent, and the three it checked first: no more.
    requests = counted["succeeded"] + counted["checked"]
    wait_until(lambda: served(server, "photos")[0] - before[0] >= requests, "the stats")
    after = served(server, "photos")
    assert (after[0] - before[0], after[1] - before[1]) == (requests, 2 * requests)
    # Sorted by name, two a request, wrapping round: (a, b), (c, a), (b, c), then again.
    a, b, c = photos / "a.png", photos / "b.JPG", photos / "c.png"
    sizes = [len(expected_body(fmt, pair)) for pair in ([a, b], [c, a], [b, c])]
    sent = int(counted["sent"])
    assert counted["bytes"] == sum(sizes[i % 3] for i in range(sent))
    assert counted["per_image"] == pytest.approx(counted["bytes"] / sent / 2, abs=0.05)
    header, [row] = read_csv(out)
    assert header[-2:] == list(BYTES_COLUMNS)
    assert min(sizes) <= int(row["Avg Request Bytes"]) <= max(sizes)
    assert int(row["Avg Image Bytes"]) == pytest.approx(int(row["Avg Request Bytes"]) / 2, abs=1)
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["Concurrency", "infer/s", "bytes/req", "bytes/image"]
    assert int(table[1].split()[2].replace(",", "")) == int(row["Avg Request Bytes"])


def test_a_file_the_server_refuses_stops_the_run_naming_the_files(
    server: str, photos: Path, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes((photos / "a.png").read_bytes())
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    result = bench("-m", "photos", "-u", server, "--images", str(tmp_path), *QUICK)
    assert result.returncode == 1
    assert (
        "the server refused the infer request (files broken.png) with HTTP 400: input 'INPUT0' "
        "element 0: not an image file" in result.stderr
    )


def test_images_need_a_bytes_input(server: str, photos: Path) -> None:
    result = bench("-m", "digits", "-u", server, "--images", str(photos), *QUICK)
    assert result.returncode == 1
    assert (
        "--images: model 'digits' has no BYTES input to carry image files (its inputs: image "
        "FP32)" in result.stderr
    )


def test_images_need_a_folder_with_image_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    for folder, message in (
        (tmp_path, f"--images {tmp_path}: no image files in it (looked for bmp, gif, jpeg, jpg"),
        (tmp_path / "nosuch", f"--images {tmp_path / 'nosuch'}: does not exist"),
        (tmp_path / "readme.txt", f"--images {tmp_path / 'readme.txt'}: is not a directory"),
    ):
        # Before the server is asked anything: there is none at this address.
        assert main(["-m", "m", "-u", f"127.0.0.1:{free_port()}", "--images", str(folder)]) == 1
        assert message in capsys.readouterr().err


def test_shape_fills_dynamic_dims(server: str) -> None:
    result = bench("-m", "varwidth", "-u", server, *QUICK)
    assert result.returncode == 1
    assert (
        "input 'INPUT0' has shape [-1, -1] with a dim of unknown size (-1); give it with "
        "--shape INPUT0:D" in result.stderr
    )
    result = bench("-m", "varwidth", "-u", server, "--shape", "INPUT0:24", "-b", "3", *QUICK)
    assert result.returncode == 0, result.stderr
    assert "INPUT0 FP32 [3, 24]" in result.stderr


def test_model_without_batching_takes_its_whole_shape(server: str, tmp_path: Path) -> None:
    # iris: max_batch_size 0 and shape [-1, 4]; JSON tensors as for MLServer; data from a
    # perf_analyzer data file: one entry whole, one a row repeated to the 5 rows.
    data = tmp_path / "flowers.json"
    flowers = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]] * 2 + [[5.0, 3.4, 1.5, 0.2]]
    data.write_text(json.dumps({"data": [{"features": flowers}, {"features": flowers[1]}]}))
    result = bench("-m", "iris", "-u", server, "--shape", "features:5,4", "--format", "json",
                   "--input-data", str(data), *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "features FP32 [5, 4] (2 data entries, in turn)" in result.stderr
    assert "json requests" in result.stderr
    result = bench("-m", "iris", "-u", server, "--shape", "features:5,4", "-b", "2", *QUICK)
    assert result.returncode == 1
    assert "does not batch (max_batch_size 0)" in result.stderr


def test_a_shape_the_model_rejects_exits_nonzero_with_its_message(server: str) -> None:
    result = bench("-m", "digits", "-u", server, "--shape", "image:10", *QUICK)
    assert result.returncode == 1
    assert "does not fit the model's [64]" in result.stderr  # bench.py's warning
    assert (
        "the server refused the infer request with HTTP 400: input 'image': shape [1, 10] "
        "does not fit the model's [-1, 64]" in result.stderr
    )


def test_a_header_that_breaks_requests_exits_nonzero(server: str) -> None:
    result = bench("-m", "digits", "-u", server, "-H", "Content-Encoding: gzip", *QUICK)
    assert result.returncode == 1
    assert "HTTP 400: body is not valid gzip data" in result.stderr


def test_errors_during_the_run_are_counted_and_fail_the_run(server: str) -> None:
    result = bench("-m", "overflow", "-u", server, "--concurrency-range", "12", *QUICK)
    assert result.returncode == 1, result.stderr
    assert "request(s) failed:" in result.stderr
    assert "concurrency 12: HTTP 503 x " in result.stderr
    assert "first: " in result.stderr and "queue" in result.stderr
    errors = int(result.stdout.splitlines()[1].split()[-2])  # the table's errors column
    assert errors > 0


def test_plot_without_matplotlib_says_so_before_measuring(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    result = subprocess.run(
        [sys.executable, str(BENCH), "-m", "digits", "-u", "127.0.0.1:1", "--plot", "x.png"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(shim.parent), "PATH": ""},
    )
    assert result.returncode == 1
    assert "--plot needs matplotlib, which is not installed" in result.stderr


def test_wrong_url_says_so() -> None:
    result = bench("-m", "digits", "-u", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "connection refused; is a KServe v2 server listening there?" in result.stderr


def test_a_server_that_is_not_v2_says_so(tmp_path: Path) -> None:
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert web.poll() is None, "http.server exited"
                time.sleep(0.02)
        result = bench("-m", "digits", "-u", f"127.0.0.1:{port}")
    finally:
        web.terminate()
        web.wait()
    assert result.returncode == 1
    assert "/v2 answered HTTP 404: not a KServe v2 server, or the wrong URL" in result.stderr


def test_unknown_model_lists_the_known_ones(server: str) -> None:
    result = bench("-m", "nosuch", "-u", server)
    assert result.returncode == 1
    assert "model 'nosuch' not found" in result.stderr and "digits, iris" in result.stderr
    result = bench("-m", "digits", "-x", "9", "-u", server)
    assert result.returncode == 1
    assert "model 'digits' version 9 not found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency-range", "4:2"],
        ["--request-rate-range", "0"],
        ["--shape", "image"],
        ["-H", "no colon"],
        ["-H", "Content-Length: 5"],
        ["--percentile", "100"],
        ["--workers", "0"],
        ["--concurrency-range", "1", "--request-rate-range", "10"],
        ["--format", "multipart"],
        ["--image-input", "INPUT0"],
        ["--images", ".", "--input-data", "data.json"],
    ],
)
def test_bad_command_lines_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["-m", "digits", *args])
    assert exit.value.code == 2
    assert "bench.py: error: " in capsys.readouterr().err


# -- the parts, on known inputs -----------------------------------------------------------


def window(throughput: float, latency_us: float) -> Window:
    samples = np.full(10, latency_us * 1000, dtype=np.int64)
    return Window(throughput, samples, 0, 0, {}, [0.5], 10, 0, 1.0)


def test_stability_rule_is_perf_analyzers() -> None:
    steady = [window(1000, 500), window(1050, 520), window(960, 490)]
    assert is_stable(steady, None)
    assert not is_stable(steady[:2], None)  # needs three windows
    assert not is_stable([*steady[:2], window(1300, 500)], None)  # throughput +20%
    assert not is_stable([*steady[:2], window(1000, 700)], None)  # latency +30%
    assert is_stable([window(5, 500), *steady], None)  # only the last three count
    assert not is_stable([window(0, 0)] * 3, None)  # nothing measured is not stable
    assert is_stable([window(1000, 500), window(1150, 500), window(1000, 500)], None, 0.2)


def test_window_merge_counts_inferences_per_second_per_worker() -> None:
    a = Sample(2_000_000_000, array("q", [1_000_000] * 100), cpu_s=1.0, sent=100)
    b = Sample(1_000_000_000, array("q", [3_000_000] * 50), cpu_s=0.25, sent=50,
               errors={"HTTP 503": [2, "queue full"]})  # fmt: skip
    merged = Window.merge([a, b], batch=4, server=None)
    assert merged.throughput == pytest.approx(100 * 4 / 2 + 50 * 4 / 1)
    assert merged.cpu == [0.5, 0.25]
    assert merged.successes == 150 and merged.error_count == 2
    assert merged.latency_ns(None) == pytest.approx((100 * 1e6 + 50 * 3e6) / 150)


def test_level_breakdown_from_triton_statistics() -> None:
    model = Model("m", None, (Tensor("x", "FP32", (-1, 4)),), ("y",), 8)

    def stats(count: int, scale: int) -> dict[str, object]:
        times = {k: {"count": count, "ns": count * scale * (i + 1) * 1000}
                 for i, k in enumerate(["success", "queue", "compute_input", "compute_infer",
                                        "compute_output", "fail", "cache_hit", "cache_miss"])}  # fmt: skip
        entry = {"name": "m", "version": "1", "inference_stats": times}
        return {"model_stats": [entry, {**entry, "name": "other"}]}

    before = ServerStats.parse(stats(10, 1), model)
    after = ServerStats.parse(stats(110, 1), model)
    delta = after - before
    assert delta.times["queue"] == (100, 100 * 2000)
    windows = [window(1000, 100)] * 3
    for w in windows:
        w.server = delta
        w.send_ns, w.recv_ns = 10 * 5000, 10 * 3000  # 5 us and 3 us per request
    level = Level.of(4, windows, True, None)
    b = level.breakdown_us()
    assert (b["Server Queue"], b["Server Compute Input"]) == (2.0, 3.0)
    assert (b["Server Compute Infer"], b["Server Compute Output"]) == (4.0, 5.0)
    assert (b["Client Send"], b["Client Recv"]) == (5.0, 3.0)
    assert b["response wait"] == 100 - 8
    assert b["Network+Server Send/Recv"] == 100 - 8 - (2 + 3 + 4 + 5)
    with pytest.raises(ValueError):
        ServerStats.parse({"models": []}, model)


def test_ranges_and_options() -> None:
    assert parse_range("1:8:2", int, "--c") == [1, 3, 5, 7]
    assert parse_range("4", int, "--c") == [4]
    assert parse_range("100:300:100", float, "--r") == [100, 200, 300]
    assert inputs.parse_shape_option("ns:x:3,4") == ("ns:x", (3, 4))
    assert inputs.parse_header_option("Authorization:  Bearer t ") == ("Authorization", "Bearer t")


def test_shapes_without_a_model_configuration() -> None:
    # MLServer: no config, so no max_batch_size; a leading -1 is the batch.
    model = Model(
        "m", None, (Tensor("x", "FP32", (-1, 3)), Tensor("y", "INT8", (-1, -1))), (), None
    )
    with pytest.raises(BenchError, match=r"input 'y' has shape \[-1, -1\]"):
        inputs.resolve_shapes(model, 4, {})
    assert inputs.resolve_shapes(model, 4, {"y": (4, 7)}) == {"x": (4, 3), "y": (4, 7)}


@pytest.mark.parametrize("binary", [True, False])
def test_requests_decode_with_the_servers_decoder(binary: bool) -> None:
    datatypes = ["BOOL", "UINT8", "INT16", "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]
    model = Model("m", None, tuple(Tensor(d, d, (-1, 3)) for d in datatypes), ("out",), 8)
    rng = np.random.default_rng(1)
    shapes = inputs.resolve_shapes(model, 2, {})
    arrays = {d: inputs.generate(d, shapes[d], "random", rng) for d in datatypes}
    body, header_length = inputs.encode_body(model, arrays, binary)
    request = decode_request(body, None if header_length is None else str(header_length))
    decoded = {i.name: i.array for i in request.inputs}
    for d in datatypes:
        assert decoded[d].shape == (2, 3)
        if d == "BF16":  # binary: the top 16 bits travel; JSON: the server rounds the float
            if binary:
                expected = (arrays[d].view(np.uint32) >> 16 << 16).view(np.float32)
            else:
                expected = arrays[d].astype(ml_dtypes.bfloat16).astype(np.float32)
            assert np.array_equal(decoded[d].astype(np.float32), expected)
        elif d == "BYTES":
            assert [bytes(v) for v in decoded[d].ravel()] == list(arrays[d].ravel())
        else:
            assert np.array_equal(decoded[d], arrays[d]), d
    if binary:
        assert request.outputs is not None and request.outputs[0].binary


def test_warnings_name_a_saturated_client_and_a_missed_schedule() -> None:
    busy = Level.of(8, [window(1000, 100)] * 3, True, None)
    busy.cpu = [0.97]
    late = Level.of(500, [window(450, 100)] * 3, True, None)
    late.sent, late.delayed = 1000, 50
    lines = report.warnings("rate", [busy, late], 1000)
    assert lines[0].startswith("request rate 8/s: a load worker used 97% of a core")
    assert lines[1].startswith("request rate 500/s: 5.0% of the requests went out late")
    unstable = Level.of(2, [window(1000, 100), window(2000, 100), window(1000, 100)], False, None)
    assert "not stable within 3 windows" in report.warnings("concurrency", [unstable], 1000)[0]


def test_image_bodies_are_what_tritonclient_json_clients_and_httpx_send(photos: Path) -> None:
    model = Model("photos", None, (Tensor("INPUT0", "BYTES", (-1,)),), ("OUTPUT0",), 8)
    endpoint = Endpoint("127.0.0.1", 8000)
    files = images.read_folder(photos)
    assert [f.name for f in files] == ["a.png", "b.JPG", "c.png"]
    tensor = images.image_input(model, None)
    for fmt in ("binary", "json", "multipart"):
        requests = images.image_requests(endpoint, model, tensor, files, (2,), fmt, {})
        assert [r.label for r in requests] == [
            "files a.png, b.JPG",
            "files c.png, a.png",
            "files b.JPG, c.png",
        ]
        for request, pair in zip(requests, ([0, 1], [2, 0], [1, 2])):
            want = expected_body(fmt, [photos / files[i].name for i in pair])
            assert request.wire.endswith(b"\r\n\r\n" + want), fmt
            assert request.body_size == len(want)
            assert f"Content-Length: {len(want)}\r\n".encode() in request.wire
            if fmt != "multipart":  # and the server's own decoder reads the files back
                header = request.wire.split(b"Inference-Header-Content-Length: ")[1:]
                length = header[0].split(b"\r\n")[0].decode() if header else None
                [decoded] = decode_request(want, length).inputs
                assert [bytes(v) for v in decoded.array] == [files[i].data for i in pair]
    assert b"Content-Type: multipart/form-data; boundary=" in requests[0].wire


def test_the_image_input_is_the_bytes_one_or_the_one_named() -> None:
    two = Model("m", None, (Tensor("a", "BYTES", (-1,)), Tensor("b", "BYTES", (-1,)),
                            Tensor("c", "FP32", (-1, 2))), (), 8)  # fmt: skip
    with pytest.raises(BenchError, match=r"2 BYTES inputs \(a, b\); choose one with --image-input"):
        images.image_input(two, None)
    assert images.image_input(two, "b").name == "b"
    with pytest.raises(BenchError, match="--image-input c: the input is FP32"):
        images.image_input(two, "c")
    with pytest.raises(BenchError, match=r"no such input \(its inputs: a BYTES, b BYTES, c FP32\)"):
        images.image_input(two, "d")
    tensor = images.image_input(two, "a")
    others = {"b": np.array([b"x"], dtype=object), "c": np.zeros((1, 2), np.float32)}
    endpoint = Endpoint("127.0.0.1", 8000)
    files = [images.ImageFile("x.png", b"x")]
    with pytest.raises(BenchError, match=r"inputs besides a \(b, c\), which a form of files"):
        images.image_requests(endpoint, two, tensor, files, (1,), "multipart", others)
    # Five files, three a request: every file equally often after five requests.
    five = [images.ImageFile(f"{i}.png", b"") for i in range(5)]
    order = [f.name[0] for batch in images.batches(five, 3) for f in batch]
    assert "".join(order) == "012340123401234"


def test_a_2xx_answer_must_be_a_v2_inference_response() -> None:
    check_response(b'{"model_name": "m", "outputs": [{"name": "y", "data": [1]}]}')
    check_response(
        b'{"outputs": [{"name": "y", "parameters": {"binary_data_size": 4}}]}\x00\xff\x01\x02'
    )
    for body in (b"<html>ok</html>", b'{"result": 1}', b""):
        with pytest.raises(BenchError, match="not with a v2 inference response"):
            check_response(body)


def test_data_file_entries_are_whole_tensors_or_one_row(tmp_path: Path) -> None:
    model = Model("m", None, (Tensor("x", "INT32", (-1, 2)),), (), 4)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"x": [1, 2]}, {"x": {"content": [1, 2, 3, 4, 5, 6]}}]}))
    entries = inputs.load_data_file(data, model, 3, {})
    assert entries[0]["x"].tolist() == [[1, 2]] * 3
    assert entries[1]["x"].tolist() == [[1, 2], [3, 4], [5, 6]]
    data.write_text(json.dumps({"data": [{"x": [1, 2, 3]}]}))
    with pytest.raises(BenchError, match="input 'x' has 3 values; shape \\[3, 2\\] needs 6"):
        inputs.load_data_file(data, model, 3, {})


@pytest.mark.parametrize(
    "response",
    [
        # Framing the test server never uses, but Triton, MLServer or a proxy may.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b'HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 20\r\n\r\n{"error": "full up"}',
        b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
    ],
)
def test_connection_frames_responses(response: bytes) -> None:
    async def exchange() -> list[tuple[int, bytes]]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for i in range(0, len(response), 7):  # in pieces, to exercise reassembly
                writer.write(response[i : i + 7])
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        web = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = web.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[tuple[int, bytes]]] = loop.create_future()
        got: list[tuple[int, bytes]] = []

        def on_response(conn: HTTPConnection, status: int, body: bytes) -> None:
            got.append((status, body))
            done.set_result(got)

        def on_failure(conn: HTTPConnection, reason: str) -> None:
            done.set_exception(AssertionError(reason))

        _, conn = await loop.create_connection(
            lambda: HTTPConnection(on_response, on_failure), "127.0.0.1", port
        )
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        result = await asyncio.wait_for(done, 10)
        conn.close()
        web.close()
        await web.wait_closed()
        return result

    [(status, body)] = asyncio.run(exchange())
    if b"503" in response:
        assert (status, body) == (503, b'{"error": "full up"}')
    else:
        assert status == 200 and body == b""  # 2xx bodies are not kept
