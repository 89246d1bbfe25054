"""The parts of tools/bench.py, in the order a run uses them.

target.py      the server under test: URL, v2 metadata, model config, statistics
inputs.py      shapes, data and the ready-to-write infer requests
images.py      --images: image files as the data, and the multipart form
connection.py  one keep-alive HTTP/1.1 connection (callback style, for speed)
load.py        the load workers (concurrency and request-rate loops) and their pool
measure.py     windows, the stability rule, one level's result
report.py      progress, table, CSV, plot, warnings
cli.py         the command line, tying them together
"""
