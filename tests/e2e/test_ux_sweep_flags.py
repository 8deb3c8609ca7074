"""`sweep --set/--seeds/--limit`, the local sweep's progress bar and `status`'s sweep-level line."""
from __future__ import annotations

import json

import pytest

from bench.cli import main as cli_main
from bench.spec import make_spec, parse_assignments
from bench.store import ResultsStore
from sweeps import load_sweep, plan_sweep
from sweeps.cli import narrow_sweep
from sweeps.status import DONE, PENDING, RUNNING, RunStatus, sweep_eta, sweep_line


def run_cli(capsys, *argv):
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _run_key(task, method, seed, *sets):
    """The key `saflex-bench run TASK METHOD --seed S --set ...` gives (bench/cli.py's _run)."""
    return make_spec(task, method, seed, parse_assignments(sets)).key


def test_set_fixes_a_field_for_the_whole_grid_with_run_keys():
    cfg = narrow_sweep(load_sweep("demo"), parse_assignments(["epochs=1", "saflex.eps=0.05"]), [0, 1])
    plan = plan_sweep(cfg)
    assert len(plan.runs) == 9 * 2  # 9 methods (3 upstreams x X, X+ref, X+saflex) x the 2 seeds asked for
    for r in plan.runs:
        assert r.spec.epochs == 1 and r.spec.seed in (0, 1)
        sets = ["epochs=1", "saflex.eps=0.05", "ref_frac=0.5"]  # ref_frac: the demo file's fixed field
        assert r.key == _run_key(r.spec.task, r.spec.method, r.spec.seed, *sets)
        assert (r.spec.knobs or {}).get("eps") == (0.05 if r.spec.learner == "saflex" else None)
    # a --set on a grid axis replaces the axis (the file's values are gone)
    plan = plan_sweep(narrow_sweep(load_sweep("demo"), {"method": "none"}))
    assert {r.spec.method for r in plan.runs} == {"none"} and len(plan.runs) == 3


def test_bad_narrowing_flags_are_one_line_errors(capsys, tmp_path):
    for argv, words in ((["--seeds", "a,b"], "--seeds"), (["--limit", "0"], "--limit"),
                        (["--set", "epochs"], "malformed --set"), (["--set", "nope=1"], "unknown run field 'nope'")):
        code, _, err = run_cli(capsys, "sweep", "demo", "--dry-run", "--results", tmp_path / "r", *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_dry_run_with_limit_plans_only_n(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "sweep", "demo", "--dry-run", "--executor", "local", "--results", tmp_path / "r",
                           "--set", "epochs=1", "--limit", "4")
    assert code == 0
    assert "narrowed by --set epochs=1 --limit 4" in out
    assert "would submit 4" in out


def test_sweep_demo_with_set_runs_locally_with_the_keys_of_run(capsys, tmp_path):
    from bench.store import sweep_plan_path, write_json_atomic

    results = tmp_path / "r"
    (results / "sweeps" / "demo").mkdir(parents=True)
    write_json_atomic(sweep_plan_path(results, "demo"), {"sweep": "demo", "keys": ["full0grid000"]})  # a full run's plan
    code, out, err = run_cli(capsys, "sweep", "demo", "--set", "epochs=1", "--seeds", "0", "--limit", "2",
                             "--executor", "local", "--results", results, "--wandb", "disabled")
    assert code == 0, out + err
    assert "done 2 / failed 0" in out
    assert "2/2" in err and "run" in err  # the tqdm bar over the sweep's runs (stderr)
    store = ResultsStore(results)
    want = {_run_key("digits/sklearn", m, 0, "epochs=1", "ref_frac=0.5") for m in ("none", "none+ref")}
    got = {p.name for p in (results / "runs").iterdir() if store.is_done(p.name)}
    assert got == want
    for k in got:
        assert store.read_result(k)["spec"]["epochs"] == 1
    # the narrowed run adds its keys to the sweep's plan; the full grid's stay (reports --sweep demo sees both)
    plan = json.loads(sweep_plan_path(results, "demo").read_text())["keys"]
    assert plan[0] == "full0grid000" and set(plan[1:]) == want
    code, out, _ = run_cli(capsys, "status", "demo", "--set", "epochs=1", "--seeds", "0", "--limit", "2",
                           "--results", results)
    assert "sweep: 2/2 done, 0 running, 0 failed, 0 pending, 0 not submitted; nothing in flight" in out


class _Store:
    def __init__(self, results, attempts=None):
        self.results, self.attempts = results, attempts or {}

    def read_result(self, k):
        return self.results.get(k)

    def read_attempt(self, k):
        return self.attempts.get(k)


def test_sweep_eta_from_finished_runs():
    done = {f"d{i}": {"cost": {"process_s": t, "wall_s": 1.0}} for i, t in enumerate((10.0, 20.0, 30.0))}
    states = {**{k: RunStatus(k, DONE) for k in done}, "p1": RunStatus("p1", PENDING), "p2": RunStatus("p2", PENDING),
              "r1": RunStatus("r1", RUNNING)}
    # median 20 s: two pending (40 s) + a running one just started (20 s), 2 at a time
    store = _Store(done, {"r1": {"started_at": "2999-01-01T00:00:00Z"}})
    eta, n = sweep_eta(store, states, 2)
    assert n == 3 and eta == pytest.approx(30.0)
    line = sweep_line(store, states, 2)
    assert line.startswith("sweep: 3/6 done, 1 running, 0 failed, 2 pending") and "ETA 0 min 30 s" in line
    # no finished run yet: no ETA
    assert sweep_eta(_Store({}), {"p": RunStatus("p", PENDING)}, 1) == (None, 0)
    assert "ETA after the first run finishes" in sweep_line(_Store({}), {"p": RunStatus("p", PENDING)}, 1)
