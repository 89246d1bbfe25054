"""`cinfer batch MODEL INPUT --output OUT`: run a model over a file or folder, offline.

In this process over the repository (config.toml's, or --repository), or against a running
server with --url. Rerun the same command to resume: OUT is the checkpoint (docs/batch.md).

Exit codes: 0 every row written (error rows included: they are results), 2 an input, output
or option that cannot be used, 3 the model or server cannot answer (not loadable,
unreachable after the retries, the token refused), 75 another run holds OUT's lock (try
later), 130 stopped by SIGINT or SIGTERM; from 3 on, OUT holds whole rows and a rerun resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from .config import LOG_LEVELS, config_option, configure_logging, load_settings

INTERRUPTED = 130
LOCKED = 75  # EX_TEMPFAIL: cron and systemd read it as "try again later"


@click.command(short_help="Run a model over a file or folder of inputs, offline.")
@click.argument("model")
@click.argument("source", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="OUT",
    help="rows.jsonl, rows.csv, rows.parquet (a folder), rows.db (with --table), "
    "sqlite:///FILE?table=NAME or postgresql://...?table=NAME. Rerun with the same OUT to "
    "resume.",
)
@click.option(
    "--table",
    metavar="NAME",
    help="The table of a SQLite or PostgreSQL OUT (default: the model's name).",
)
@click.option("--model-version", metavar="N", help="A version of the model (default: the latest).")
@config_option
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Model repository folder (overrides [repository] path).",
)
@click.option(
    "--instances",
    type=click.IntRange(1, 256),
    metavar="N",
    help="In this process: engine instances for the run, over model.toml's (on CPU, one per "
    "core is the fastest; docs/batch.md, Throughput).",
)
@click.option(
    "--url", metavar="URL", help="Run on this server (http://host:port) instead of in this process."
)
@click.option("--token", metavar="TOKEN", help="--url: the API token to send.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=4,
    show_default=True,
    help="--url: requests in flight.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=8,
    show_default=True,
    help="--url: tries again on 503, 429 and failed connections, backing off.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="--url: send tensors as JSON (default: binary tensors)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    metavar="N",
    help="Rows per request (default: the model's max_batch_size).",
)
@click.option(
    "--classification",
    type=click.IntRange(1),
    metavar="N",
    help="Answer the top N classes of the labelled outputs, as 'score:index:label'.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds between progress lines when stderr is not a terminal.",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning",
              show_default=True, metavar="LEVEL", help=", ".join(LOG_LEVELS))  # fmt: skip
def batch(model: str, source: Path, output: str, table: str | None, **options: Any) -> None:
    """Run MODEL over INPUT and write one row per input row to OUT, in input order.

    INPUT is a JSONL file of v2 infer requests (one per line), a CSV, Parquet or .npy file
    of rows for a model with one input, or a folder of image files (sorted by name).
    """
    configure_logging(options["log_level"])
    if options["url"] and (options["repository"] or options["config"]):
        raise click.UsageError("--repository and --config are for runs in this process, not --url")
    for name in ("token", "as_json"):
        if options[name] and not options["url"]:
            flag = "--json" if name == "as_json" else f"--{name}"
            raise click.UsageError(f"{flag} is for runs on a server (--url)")
    if options["url"] and options["instances"]:
        raise click.UsageError("--instances is for runs in this process (the server has its own)")
    code = asyncio.run(_main(model, source, output, table, options))
    if code:
        raise click.exceptions.Exit(code)


async def _main(model: str, source: Path, output: str, table: str | None, options: Any) -> int:
    from ..batch.rows import BatchError, OutputLocked, TargetFailed

    stop = asyncio.Event()
    _on_signals(stop)
    try:
        async with _target(model, options) as target:
            return await _run(target, source, output, table, options, stop)
    except OutputLocked as exc:
        _say(str(exc))
        return LOCKED
    except BatchError as exc:
        _say(str(exc))
        return 2
    except TargetFailed as exc:
        _say(f"model '{model}' cannot answer: {exc}")
        return 3


@contextlib.asynccontextmanager
async def _target(model: str, options: Any) -> AsyncIterator[Any]:
    version, classification = options["model_version"], options["classification"] or 0
    if options["url"]:
        import httpx

        from ..batch.remote import Remote

        token = options["token"]
        headers = {"authorization": f"Bearer {token}"} if token else {}
        concurrency = options["concurrency"]
        async with httpx.AsyncClient(
            base_url=options["url"].rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(300.0, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency),
        ) as client:
            yield await Remote.connect(
                client, model, version, concurrency, options["retries"], not options["as_json"],
                classification,
            )  # fmt: skip
        return
    from ..batch.local import Local, loaded, schema_of

    settings = load_settings(options["config"], {"repository": {"path": options["repository"]}})
    root = settings.repository.path
    if not root.is_dir():
        raise click.UsageError(f"model repository {root} does not exist or is not a folder")
    pixels, pin = settings.server.max_image_pixels, settings.server.pin_threads
    async with loaded(root, model, version, pixels, pin, options["instances"]) as dataplane:
        found = dataplane.version(model, version)
        yield Local(dataplane, schema_of(found, classification), version, classification)


async def _run(
    target: Any, source: Path, output: str, table: str | None, options: Any, stop: asyncio.Event
) -> int:
    from ..batch.inputs import Folder
    from ..batch.kinds import open_input, open_output
    from ..batch.progress import Progress
    from ..batch.runner import Run

    schema = target.schema
    rows = schema.rows_per_request(options["batch_size"]) if len(schema.inputs) == 1 else 1
    reader = await asyncio.to_thread(open_input, source, schema, rows)
    sink = open_output(output, table, schema.model)
    run = Run(reader, target, sink)
    try:
        start = await run.open(isinstance(reader, Folder))
        _say(f"{target.describe()}; {rows} row{'s' if rows > 1 else ''} per request")
        progress = Progress(sys.stderr, reader.total, start, options["progress_interval"])
        summary = await run.run(start, stop, progress)
    finally:
        await run.close()
    progress.finish(summary, sink.name)
    if summary.stopped is None:
        return 0
    return INTERRUPTED if stop.is_set() else 3


def _on_signals(stop: asyncio.Event) -> None:
    """SIGINT / SIGTERM: stop sending, finish what is in flight, write it; a second one
    quits at once (the output still holds whole rows: a torn last line is cut on resume)."""
    loop = asyncio.get_running_loop()

    def stopping(number: int) -> None:
        if stop.is_set():
            _say("stopped at once; the rows written are kept")
            os._exit(INTERRUPTED)
        stop.set()
        name = signal.Signals(number).name
        _say(f"{name}: finishing the requests in flight and writing them (again to quit now)")

    for number in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(number, stopping, number)


def _say(message: str) -> None:
    sys.stderr.write(f"\ncinfer batch: {message}\n" if sys.stderr.isatty() else
                     f"cinfer batch: {message}\n")  # fmt: skip
    sys.stderr.flush()
