import json
import os
import signal
import subprocess
import sys
import textwrap

from bench.store import ResultsStore, read_json, write_json_atomic


DONE = {"status": "done", "spec": {"task": "toy/blobs", "method": "none", "seed": 0}, "metrics": {"test_acc": 0.5}}


def test_done_iff_result_parses(tmp_path):
    store = ResultsStore(tmp_path)
    assert not store.is_done("abc") and store.done_keys() == set()
    store.write_result("abc", {"key": "abc", **DONE})
    assert store.is_done("abc") and store.done_keys() == {"abc"}
    (store.run_dir("torn") ).mkdir(parents=True)
    (store.run_dir("torn") / "result.json").write_text('{"key": "torn", "sta')
    assert not store.is_done("torn") and store.done_keys() == {"abc"}


def test_atomic_write_leaves_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]


def test_process_killed_during_final_write_leaves_no_result(tmp_path):
    # the writer is SIGKILLed in the middle of writing result.json's bytes
    code = textwrap.dedent(f"""
        import os, sys
        from bench import store
        real_fdopen = os.fdopen
        class Slow:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def write(self, data):
                self.f.write(data[: len(data) // 2]); self.f.flush()
                print("HALF", flush=True); import time; time.sleep(60)
            def flush(self): self.f.flush()
            def fileno(self): return self.f.fileno()
        os.fdopen = lambda fd, mode: Slow(real_fdopen(fd, mode))
        store.ResultsStore({str(tmp_path)!r}).write_result("k1", {{"key": "k1", **{DONE!r}, "pad": "x" * 100000}})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "HALF"
    p.send_signal(signal.SIGKILL)
    p.wait()
    store = ResultsStore(tmp_path)
    assert not (store.run_dir("k1") / "result.json").exists()
    assert not store.is_done("k1")


def test_metrics_rows_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75}]
    store.write_metrics("k", rows)
    assert store.read_metrics("k") == rows
    with open(store.run_dir("k") / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "va')  # torn line from a crash
    assert store.read_metrics("k") == rows
    assert json.loads((store.run_dir("k") / "metrics.jsonl").read_text().splitlines()[0]) == rows[0]
