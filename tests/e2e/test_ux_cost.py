"""result.json's cost covers the whole process (cost.process_s, cost.phases), and `sweep --dry-run`
estimates each job's time from stored runs of the same task and model."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.runner import process_age_s, process_cost

REPO = Path(__file__).resolve().parents[2]


def test_process_cost_adds_up():
    t0 = time.perf_counter() - 2.0  # entered run_spec 2 s ago
    c = process_cost({"load_s": 0.5, "loop_s": 1.0}, t0, startup_s=1.0)
    assert c["process_s"] == pytest.approx(3.0, abs=0.05)
    assert c["phases"]["other_s"] == pytest.approx(0.5, abs=0.05)
    assert sum(c["phases"].values()) == pytest.approx(c["process_s"], abs=0.01)


@pytest.mark.skipif(process_age_s() is None, reason="needs /proc (Linux)")
def test_cost_covers_the_process_of_a_real_run(tmp_path):
    """A 1-epoch digits run in its own process (`saflex-bench run`): cost.process_s against the time the
    process ran until its last atexit handler, and against the subprocess's wall time. Only the
    interpreter's own teardown after that (freeing torch & co., ~0.5 s on a loaded 2-core box) lies
    beyond what a record written by the process can hold."""
    argv = ["run", "--task", "digits/sklearn", "--method", "none+saflex", "--epochs", "1", "--results", str(tmp_path),
            "--wandb", "disabled", "--quiet"]
    code = ("import atexit, sys; from bench.runner import process_age_s; "
            "atexit.register(lambda: print('AGE_AT_EXIT', process_age_s(), file=sys.stderr)); "
            f"from bench.cli import main; sys.exit(main({argv!r}))")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-2000:]
    age = float(next(ln for ln in r.stderr.splitlines() if ln.startswith("AGE_AT_EXIT")).split()[1])
    (rec_path,) = tmp_path.glob("runs/*/result.json")
    cost = json.loads(rec_path.read_text())["cost"]
    phases = cost["phases"]
    assert set(phases) == {"startup_s", "load_s", "setup_s", "loop_s", "final_eval_s", "close_s", "other_s"}
    assert phases["loop_s"] == pytest.approx(cost["wall_s"], abs=1e-3)  # the training loop's part, as before
    assert phases["startup_s"] > 0 and phases["load_s"] > 0 and phases["final_eval_s"] > 0
    assert sum(phases.values()) == pytest.approx(cost["process_s"], abs=0.01)
    print(f"process_s {cost['process_s']:.2f}  age at exit {age:.2f} ({cost['process_s'] / age:.3f})  "
          f"wall {wall:.2f} ({cost['process_s'] / wall:.3f})")
    assert cost["process_s"] <= age + 0.02  # /proc/uptime ticks are 10 ms
    assert cost["process_s"] >= 0.95 * age


def _fake_record(results: Path, key: str, spec: dict, process_s: float | None, wall_s: float, epochs: int) -> None:
    d = results / "runs" / key
    d.mkdir(parents=True)
    cost = {"wall_s": wall_s, **({"process_s": process_s} if process_s is not None else {})}
    (d / "result.json").write_text(json.dumps({"key": key, "status": "done", "spec": spec, "cost": cost,
                                               "metrics": {"test_acc": 0.9, "epochs_run": epochs}}))


def test_dry_run_estimates_each_job_and_warns_below_timeout(tmp_path, capsys):
    from bench.cli import main
    from bench.spec import make_spec

    spec = make_spec("digits/sklearn", "none", 7, {"epochs": 2}).to_dict()
    results = tmp_path / "r"
    # fixed parts 40 and 50 s (median 45), 10 and 30 s per epoch (median 20)
    _fake_record(results, "aaaa00000001", spec, 60.0, 20.0, 2)
    _fake_record(results, "aaaa00000002", spec, 110.0, 60.0, 2)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("name: est\nfixed: {task: digits/sklearn, epochs: 3}\ngrid: {method: [none, none+saflex], seed: [0]}\n"
                     "launcher: {timeout_min: 1}\n")
    code = main(["sweep", str(sweep), "--dry-run", "--executor", "local", "--results", str(results)])
    out, err = capsys.readouterr()
    assert code == 0
    lines = [ln for ln in out.splitlines() if "  submit  " in ln]
    assert len(lines) == 2 and all("est ~1 min 45 s from 2 runs" in ln for ln in lines)  # 45 + 3 x 20 s
    assert "longest estimate ~1 min 45 s" in out
    assert "timeout_min 1 is below the estimated 1.8 min" in err
    # a roomy timeout: no warning; another model: no estimate
    sweep.write_text(sweep.read_text().replace("timeout_min: 1", "timeout_min: 5").replace("epochs: 3", "epochs: 3, model: resnet18"))
    main(["sweep", str(sweep), "--dry-run", "--executor", "local", "--results", str(results)])
    out, err = capsys.readouterr()
    assert "est ? (no stored run" in out and "warning" not in err
