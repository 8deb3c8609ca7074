"""reports/compare.py: per-key differences between two regenerations, the numerical noise floor,
agreement of conclusions, gain-vs-noise verdicts, numerics mismatch; `saflex-bench compare`."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from reports.compare import (classify_gains, compare_roots, experiment_noise, gain_noise_verdict, noise_floor,
                             numerics_mismatch, paired_gains)
from reports.load import identity_columns, load_results

DG = "digits/sklearn"
SPEC = dict(model="small_cnn", epochs=2, optimizer="adam", lr=0.003, batch_size=64, select_metric="acc")
# (upstream, learner) -> seed -> test_acc, in A and in B
A = {("none", "none"): {0: 0.90, 1: 0.91, 2: 0.92, 3: 0.95},  # seed 3 (both arms): only in A
     ("none", "saflex"): {0: 0.93, 1: 0.935, 2: 0.96, 3: 0.90},  # gains .03 .025 .04: CI excludes 0
     ("cutmix-a1.0", "none"): {0: 0.80, 1: 0.82, 2: 0.81},
     ("cutmix-a1.0", "saflex"): {0: 0.79, 1: 0.80, 2: 0.805}}   # gains -.01 -.02 -.005: negative
B = {("none", "none"): {0: 0.905, 1: 0.91, 2: 0.915},
     ("none", "saflex"): {0: 0.90, 1: 0.93, 2: 0.93},           # gains -.005 .02 .015: CI includes 0
     ("cutmix-a1.0", "none"): {0: 0.80, 1: 0.815, 2: 0.81},
     ("cutmix-a1.0", "saflex"): {0: 0.81, 1: 0.82, 2: 0.815}}   # gains .01 .005 .005: positive


def method(up: str, learner: str) -> str:
    return up if learner == "none" else f"{up}+{learner}"


def key_of(up: str, learner: str, seed: int) -> str:
    return f"{up.replace('.', '')}-{learner}-{seed}"


def write_store(root: Path, accs: dict, threads: int = 1, sweep: str = "slice", numerics: bool = True) -> Path:
    for (up, learner), seeds in accs.items():
        for seed, acc in seeds.items():
            key = key_of(up, learner, seed)
            d = root / "runs" / key
            d.mkdir(parents=True)
            rec = {"key": key, "status": "done", "sweep": sweep,
                   "spec": dict(SPEC, task=DG, method=method(up, learner), seed=seed),
                   "metrics": {"test_acc": acc, "val_acc": acc}, "cost": {"epoch_s": 1.0},
                   "versions": {"torch": "2.14.1"}, "host": "h", "device": "cpu", "finished_at": "2026-11-30T00:00:00Z"}
            if numerics:
                rec["numerics"] = {"threads": threads, "device_name": "AMD EPYC", "cpu_capability": "AVX512",
                                   "torch": "2.14.1", "cuda": None, "cudnn": None, "deterministic": False,
                                   "omp_num_threads": str(threads)}
            (d / "result.json").write_text(json.dumps(rec))
    return root


@pytest.fixture
def roots(tmp_path):
    return write_store(tmp_path / "a", A, threads=1), write_store(tmp_path / "b", B, threads=2)


def test_load_flattens_numerics_and_keeps_them_out_of_identity(roots):
    df = load_results(roots[0])
    assert set(df["numerics.threads"]) == {1}
    assert "numerics.device_name" in df.columns
    assert not any(c.startswith("numerics.") for c in identity_columns(df))


def test_per_key_differences_and_noise_floor(roots):
    c = compare_roots(*roots)
    expected = {key_of(u, lr, s): B[(u, lr)][s] - A[(u, lr)][s] for (u, lr), seeds in B.items() for s in seeds}
    got = dict(zip(c.runs["key"], c.runs["diff"]))
    assert got.keys() == expected.keys()  # seed 3 (only in A) is not compared
    for k, v in expected.items():
        assert got[k] == pytest.approx(v)
    assert (c.only_a, c.only_b) == (2, 0)
    d = np.array(list(expected.values()))
    f = c.floor
    assert f.n == 12 and f.n_differ == int((np.abs(d) > 1e-12).sum())
    assert f.mean_abs == pytest.approx(np.abs(d).mean())
    assert f.sd == pytest.approx(d.std(ddof=1))
    assert f.max_abs == pytest.approx(np.abs(d).max())


def test_agreement_verdicts(roots):
    c = compare_roots(*roots)
    conc = c.conclusions.set_index("upstream")
    assert set(conc["learner"]) == {"saflex"}
    none = conc.loc["none"]
    # gains on seeds 0-2 only: seed 3 (gain -.05) is only in A and must not enter A's conclusion
    assert none["gain_a"] == pytest.approx(np.mean([0.03, 0.025, 0.04]))
    assert none["gain_b"] == pytest.approx(np.mean([-0.005, 0.02, 0.015]))
    assert none["excludes_0_a"] and not none["excludes_0_b"]
    assert none["sign_agrees"] and not none["ci_agrees"] and not none["agrees"]
    cut = conc.loc["cutmix-a1.0"]
    assert cut["sign_a"] == -1 and cut["sign_b"] == 1 and not cut["sign_agrees"]


def test_paired_gains_seed_spread_is_the_none_arm_sd(roots):
    g = paired_gains(load_results(roots[1])).set_index("upstream")
    assert g.loc["none", "seed_sd"] == pytest.approx(np.std([0.905, 0.91, 0.915], ddof=1))
    assert g.loc["none", "n"] == 3


def test_cli_compare_prints_and_writes(roots, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(roots[0]), str(roots[1]), "--sweep", "slice", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "12 runs differ" in text or "of 12 runs differ" in text
    assert "threads 1" in text and "threads 2" in text
    assert "0 of 2 conclusions agree" in text
    runs = pd.read_csv(out / "compare_runs.csv")
    assert len(runs) == 12 and {"a", "b", "diff"} <= set(runs.columns)
    assert (out / "compare.md").read_text().startswith("# compare test_acc")


@pytest.mark.parametrize("args, needle", [
    (["{a}", "{missing}"], "RESULTS_B"),
    (["{a}", "{other}"], "no spec key done in both"),
    (["{a}", "{b}", "--metric", "nope"], "metric 'nope' not recorded"),
    (["{a}", "{b}", "--sweep", "nope"], "unknown sweep 'nope'"),
])
def test_cli_compare_user_errors_are_one_line(roots, tmp_path, capsys, args, needle):
    other = write_store(tmp_path / "other", {("rand-m9-n2", "none"): {7: 0.5}})
    paths = dict(a=roots[0], b=roots[1], missing=tmp_path / "missing", other=other)
    assert main(["compare", *(a.format(**paths) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


# ---- numerics mismatch ------------------------------------------------------------------------
def test_numerics_mismatch_flags_mixed_thread_counts(tmp_path):
    write_store(tmp_path / "mixed", {("none", "none"): {0: 0.9}}, threads=1)
    write_store(tmp_path / "mixed2", {("none", "saflex"): {0: 0.9}}, threads=2)
    df = pd.concat([load_results(tmp_path / "mixed"), load_results(tmp_path / "mixed2")], ignore_index=True)
    msg = numerics_mismatch(df)
    assert msg is not None and "threads 1 vs 2" in msg
    assert numerics_mismatch(df[df["numerics.threads"] == 1]) is None


def test_numerics_mismatch_unrecorded_and_absent(tmp_path):
    write_store(tmp_path / "new", {("none", "none"): {0: 0.9}})
    write_store(tmp_path / "old", {("none", "saflex"): {0: 0.9}}, numerics=False)
    new, old = load_results(tmp_path / "new"), load_results(tmp_path / "old")
    assert "not recorded for 1 of 2 runs" in numerics_mismatch(pd.concat([new, old], ignore_index=True))
    assert numerics_mismatch(old) is None  # nothing recorded anywhere: nothing to compare


# ---- gains vs noise ---------------------------------------------------------------------------
def test_gain_noise_verdicts():
    # n=4: numerical scale = floor_sd / 2 = 0.005; seed scale = seed_sd * sqrt(1/2) ~ 0.01414
    seed_sd, floor_sd, n = 0.02, 0.01, 4
    assert gain_noise_verdict(0.05, seed_sd, floor_sd, n) == "both"            # > 0.01 and > 0.0283
    assert gain_noise_verdict(-0.02, seed_sd, floor_sd, n) == "numerics only"  # > 0.01, < 0.0283
    assert gain_noise_verdict(0.005, seed_sd, floor_sd, n) == "neither"
    assert gain_noise_verdict(0.05, seed_sd, 0.2, n) == "seed only"            # numerics scale 0.1
    assert gain_noise_verdict(0.05, seed_sd, math.nan, n) == "seed only"       # no floor measured
    t = classify_gains([0.05, 0.005], seed_sd, floor_sd, n)
    assert list(t["verdict"]) == ["both", "neither"]
    assert t["numerics_noise"][0] == pytest.approx(0.005) and t["seed_noise"][0] == pytest.approx(0.02 / math.sqrt(2))


def test_experiment_noise_adds_a_verdict_per_arm(roots):
    c = compare_roots(*roots)  # floor sd of the 12 differences: 0.01586 -> numerical scale x2 = 0.0183 (n=3)
    t = experiment_noise(load_results(roots[1]), c.floor).set_index("upstream")
    # B, none: gain .01; seed sd .005 -> 2 x .005 x sqrt(2/3) = .0082 < .01 < .0183
    assert t.loc["none", "noise"] == "seed only"
    # B, cutmix: gain .0067 below both (.0125 seed, .0183 numerics)
    assert t.loc["cutmix-a1.0", "noise"] == "neither"


# ---- a real regeneration ----------------------------------------------------------------------
REGEN = """\
name: regen
fixed: {{task: digits/sklearn, epochs: 2}}
grid: {{method: [cutmix-a1.0, cutmix-a1.0+saflex], seed: [0, 1, 2]}}
launcher: {{cpus_per_task: {threads}}}
"""


@pytest.mark.slow
def test_compare_two_real_regenerations_under_1_and_2_threads(tmp_path, capsys):
    """The same digits sweep (2 methods x 3 seeds, 2 epochs) into two roots under 1 and 2 threads (the
    launcher pins cpus_per_task threads), then `compare` from the CLI."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            f = tmp_path / f"regen_t{n}.yaml"
            f.write_text(REGEN.format(threads=n))
            assert main(["sweep", str(f), "--executor", "debug", "--results", str(tmp_path / f"t{n}"),
                         "--wandb", "disabled"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "t1"), str(tmp_path / "t2"), "--sweep", "regen", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)  # the measured floor, for the record (pytest -s)
    assert "A numerics: threads 1;" in text and "B numerics: threads 2;" in text
    runs = pd.read_csv(out / "compare_runs.csv")
    assert len(runs) == 6 and runs["diff"].notna().all()
    conc = pd.read_csv(out / "compare_conclusions.csv")
    assert list(conc["upstream"]) == ["cutmix-a1.0"] and list(conc["learner"]) == ["saflex"]
