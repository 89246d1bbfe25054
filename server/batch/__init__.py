"""`cinfer batch`: the offline door. A file or folder of inputs in, one output row per input
row out, through the same DataPlane, batcher and engine as online requests (issue 15).

    input (kinds.py picks the reader and the writer by suffix or URL)
          inputs.py, tabular.py          JSONL requests | CSV, Parquet, .npy rows | image files
        -> Piece: consecutive rows, at most the model's max_batch_size, or one JSONL request
    runner.py                            a window of pieces in flight, answers put back in order
        -> a target: local.py            DataPlane.exchange in this process (the reconciler
                                         loads the one model, as `cinfer serve` would)
                     remote.py           POST .../infer to a running server (--url)
        -> Answer -> rows.py records     {"index", outputs as in a v2 response | "error"}
    output (outputs.py, tables.py)       JSONL | CSV | a SQLite or PostgreSQL table

The output is the checkpoint: rows are written in input order, so the rows it holds are the
rows done, and a rerun with the same output resumes after them. A writer holds a lock on its
output for the whole run (flock for files and SQLite, an advisory lock in PostgreSQL), so two
runs never write one output. docs/batch.md tells the user's side.
"""
