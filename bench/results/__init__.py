"""Run records: the one module that writes and reads them (docs/interfaces.md, "Results contract").

- store: `ResultsStore` (run folders, atomic writes, locks that name their holder);
- records: result.json's schema (`SCHEMA_VERSION`), decoding of older records, `read_metrics` (the
  one torn-line rule), `record_problem` (the one definition of done);
- rows: a record as one flat row (the tidy frame's columns);
- index: `ResultsIndex` / `load_index`, one SQLite row per run at `<root>/index.sqlite`, rebuilt
  incrementally, that reports, status and plan read.
"""
from bench.results.records import (METRICS, RESULT, SCHEMA_VERSION, decode_record, load_record,  # noqa: F401
                                   normalize_semantics, read_metrics, record_problem, spec_for)
from bench.results.store import ResultsStore, exclusive, read_saflex_diag, run_lock, write_json_atomic  # noqa: F401


def __getattr__(name):  # the index pulls in pandas: only when asked for
    if name in ("ResultsIndex", "load_index", "INDEX_FILE", "epochs_frame"):
        from bench.results import index

        return getattr(index, name)
    raise AttributeError(name)
