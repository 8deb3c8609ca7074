"""The MedMNIST study's report code (studies/saflex_medmnist/report.py) on synthetic stores: the fair protocol's main table (X, X+ref, X+saflex), the
task-clustered average, the multiple-comparison view, protocol text read from the specs, the tuning
seeds, the noisy diagnostic with label recovery, naming by knobs, and no machine path in the output.
The first protocol's stores (no ref_frac, no X+ref) still give a report."""
import argparse
import json
import shutil
import math
import re

import numpy as np
import pytest
from scipy import stats

import saflex_core
from bench.spec import RunSpec
from reports.study_loader import study_module

from reports.inference import holm
from reports.study_table import runs_frame

_report = study_module("saflex_medmnist", "report")
noise_floor_section, write_study = _report.noise_floor_section, _report.write_study

DEF = saflex_core.SaflexConfig().to_dict()
BASE = dict(model="small_cnn", epochs=4, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9, schedule="multistep",
            milestones=[0.5, 0.75], gamma=0.1, batch_size=128, select_metric="auc", as_rgb=False)
B, P, R = "medmnist/breastmnist", "medmnist/pneumoniamnist", "medmnist/retinamnist"
UPS = ("rand-m9-n2", "cutmix-a1.0", "mixup-a0.2")
SIZES = {B: dict(train=546, val=39, reference=39, test=156), P: dict(train=4708, val=262, reference=262, test=624),
         R: dict(train=1080, val=60, reference=60, test=400)}


def put(root, key, task, method, seed, test, val=None, knobs=None, w_auc=None, last=None, data=None, **spec_over):
    d = root / "runs" / key
    d.mkdir(parents=True)
    val = test if val is None else val
    spec = dict(BASE, task=task, method=method, seed=seed, saflex=({**DEF, **(knobs or {})} if "+saflex" in method else None),
                **spec_over)
    rows = []
    if w_auc is not None:
        rows = [{"epoch": 1, "saflex_w_auc": 0.5}, {"epoch": 2, "saflex_w_auc": w_auc}]
    if last is not None:  # the last epoch's logged values (earlier epochs must not count)
        rows = [{"epoch": 1, **{k: 0.0 for k in last}}, {"epoch": 2, **last}]
    if rows:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "result.json").write_text(json.dumps(dict(key=key, status="done", sweep=None, spec=spec,
        semantics=RunSpec.from_canonical(spec).semantics,  # what the runner writes: made by today's code
        metrics=dict(test_acc=test, test_auc=test, val_acc=val, val_auc=val, best_epoch=1, epochs_run=4),
        cost=dict(wall_s=1.0, epoch_s=1.0 if "+saflex" not in method else 1.5, samples_per_s=1.0, peak_mem_mb=1.0,
                  saflex_s=0.0, step_s=0.01 if "+saflex" not in method else 0.02),
        data=data, device="cpu", host="somehost")))


def pm(d):
    d = np.asarray(d, float)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return f"{100 * d.mean():+.2f} ± {100 * half:.2f}"


def line(md, prefix):
    return next(ln for ln in md.splitlines() if ln.startswith(prefix))


# ---- the first protocol (no ref_frac): old stores still load -------------------------------------
def test_first_protocol_store(tmp_path):
    # tuning (seed 0): eps=0.3 has the best validation gain on both tasks, but the worst test accuracy
    put(tmp_path, "t1", B, "rand-m9-n2", 0, test=0.80, val=0.80)
    put(tmp_path, "t2", B, "rand-m9-n2+saflex", 0, test=0.81, val=0.79)
    put(tmp_path, "t3", B, "rand-m9-n2+saflex", 0, test=0.10, val=0.90, knobs={"eps": 0.3})
    put(tmp_path, "t4", R, "rand-m9-n2", 0, test=0.50, val=0.50)
    put(tmp_path, "t5", R, "rand-m9-n2+saflex", 0, test=0.52, val=0.51)
    put(tmp_path, "t6", R, "rand-m9-n2+saflex", 0, test=0.10, val=0.55, knobs={"eps": 0.3})
    for s, (x, y) in {1: (0.82, 0.85), 2: (0.79, 0.80)}.items():
        put(tmp_path, f"m{s}x", B, "rand-m9-n2", s, test=x)
        put(tmp_path, f"m{s}s", B, "rand-m9-n2+saflex", s, test=y)
    for s, (x, y, a) in {0: (0.60, 0.70, 0.8), 1: (0.62, 0.69, 0.9)}.items():
        put(tmp_path, f"n{s}x", B, "noisy(0.3,rand-m9-n2)", s, test=x)
        put(tmp_path, f"n{s}s", B, "noisy(0.3,rand-m9-n2)+saflex", s, test=y, w_auc=a)
    for s, w in {1: [0.2, 1.0, 1.8, 1.0], 2: [0.4, 0.4, 1.6, 1.6]}.items():
        np.savez(tmp_path / "runs" / f"m{s}s" / "saflex_diag.npz", w=np.array(w, np.float32))
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    w_std = np.mean([np.std([0.2, 1.0, 1.8, 1.0]), np.std([0.4, 0.4, 1.6, 1.6])])
    assert f"| breastmnist | rand-m9-n2 | 3 | {w_std:.3f} | {np.mean([0.25, 0.5]):.3f} |" in md
    # selection uses validation only: eps=0.3 wins (+10 and +5 points) despite its test accuracy
    assert "Selected: **`eps=0.3`**" in md
    assert "1 of 2 SAFLEX settings beat the upstream alone on validation; the selected one is `eps=0.3`, which is NOT" in md
    assert "| `eps=0.3` | SAFLEX eps=0.3 (moves labels) | +10.0 | +5.0 | +7.5 |" in md
    assert "| `default` | SAFLEX, weights only (eps=0) | -1.0 | +1.0 | +0.0 |" in md
    # main table (first protocol: the tuning seed 0 is in it too): paired gains +1, +3, +1 points; no X+ref
    row = line(md, "| breastmnist | rand-m9-n2 |")
    assert f"| 3 / – | " in row and pm([0.01, 0.03, 0.01]) in row and "<5 pairs" in row
    assert "| retinamnist | rand-m9-n2 | 1 / – |" in md
    assert "First protocol (no `ref_frac` in the specs)" in md and "did not see the same labelled data" in md
    # the tuning seed is also a comparison seed under this protocol: flagged
    assert "**Overlap**: seed(s) 0 are in both the tuning and the main comparison" in md
    # noisy: weight AUC from the LAST epoch of metrics.jsonl, mean of 0.8 and 0.9
    assert re.search(r"\| breastmnist \| noisy\(0.3,rand-m9-n2\) \| X\+SAFLEX, weights only \(eps=0\) \| 2 \| .* \| 0\.850 ±", md)
    # records before the `data` block: the official split sizes, said so
    assert "| breastmnist | 546 | 78 | – | 156 | 0.64 | the task's official splits" in md


# ---- the fair protocol ------------------------------------------------------------------------------
# per (task, upstream): (X base, SAFLEX effect, ref effect); breast/rand has a large consistent effect
EFFECTS = {(B, "rand-m9-n2"): (0.80, 0.05, 0.0), (B, "cutmix-a1.0"): (0.82, 0.0, 0.01), (B, "mixup-a0.2"): (0.81, 0.01, 0.0),
           (P, "rand-m9-n2"): (0.85, 0.0, 0.0), (P, "cutmix-a1.0"): (0.84, -0.01, 0.0), (P, "mixup-a0.2"): (0.86, 0.0, 0.01),
           (R, "rand-m9-n2"): (0.52, 0.0, 0.0), (R, "cutmix-a1.0"): (0.53, 0.01, 0.0), (R, "mixup-a0.2"): (0.51, 0.0, -0.01)}
SEEDS = (1, 2, 3, 4, 5)


def fair_store(root, lr=1e-3, batch_size=128, tuning=True, stale=True):
    """X, X+ref, X+saflex x 9 experiments x seeds 1-5 (ref_frac 0.5, with data blocks), a tuning group
    (seed 0, first protocol) and a stale first-protocol main run that must stay out of the table."""
    rng = np.random.default_rng(0)
    acc = {}
    for (task, up), (x0, se, re_) in EFFECTS.items():
        ep = 5 if task == P else 20
        for s in SEEDS:
            x = round(x0 + rng.normal(0, 0.01), 4)
            vals = {up: x, f"{up}+ref": round(x + re_ + rng.normal(0, 0.01), 4),
                    f"{up}+saflex": round(x + se + (rng.normal(0, 0.002) if se == 0.05 else rng.normal(0, 0.01)), 4)}
            for m, v in vals.items():
                acc[(task, m, s)] = v
                put(root, f"{task.split('/')[1]}-{m}-{s}".replace("+", "_").replace("(", "").replace(")", ""), task, m, s,
                    test=v, data=SIZES[task], ref_frac=0.5, epochs=ep, lr=lr, batch_size=batch_size)
    if tuning:
        for task in (B, R):
            put(root, f"tune-{task[9:]}-x", task, "rand-m9-n2", 0, test=0.7, val=0.80, epochs=20)
            put(root, f"tune-{task[9:]}-s", task, "rand-m9-n2+saflex", 0, test=0.7, val=0.79, epochs=20)
            put(root, f"tune-{task[9:]}-e", task, "rand-m9-n2+saflex", 0, test=0.7, val=0.78, knobs={"eps": 0.1}, epochs=20)
    if stale:  # first-protocol runs of seed 3: not the same labelled data, never mixed into the fair table
        put(root, "old-x", B, "rand-m9-n2", 3, test=0.10, epochs=20)
        put(root, "old-s", B, "rand-m9-n2+saflex", 3, test=0.99, epochs=20)
    return acc


def _ci(d):
    d = np.asarray(d, float)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_fair_main_table_and_clustered_average(tmp_path):
    acc = fair_store(tmp_path)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    # one row per experiment: X, X+ref, X+saflex and the paired gains, hand-computed
    for task, up in [(B, "rand-m9-n2"), (R, "mixup-a0.2")]:
        x = np.array([acc[(task, up, s)] for s in SEEDS])
        rf = np.array([acc[(task, f"{up}+ref", s)] for s in SEEDS])
        sx = np.array([acc[(task, f"{up}+saflex", s)] for s in SEEDS])
        row = line(md, f"| {task.split('/')[1]} | {up} |")
        cells = [c.strip() for c in row.strip("|").split("|")]
        half = lambda v: stats.t.ppf(0.975, 4) * np.std(v, ddof=1) / math.sqrt(5)  # noqa: E731
        assert cells[3] == "5 / 5"
        assert cells[4] == f"{100 * x.mean():.2f} ± {100 * half(x):.2f}"
        assert cells[5] == f"{100 * rf.mean():.2f} ± {100 * half(rf):.2f}"
        assert cells[6] == f"{100 * sx.mean():.2f} ± {100 * half(sx):.2f}"
        assert cells[7] == pm(sx - x) and cells[8] == pm(sx - rf) and cells[9] == pm(rf - x)
        assert "<5 pairs" not in row
    # the stale first-protocol pair (seed 3, 10 % vs 99 %) is not in the fair table
    assert "| breastmnist | rand-m9-n2 | 20 | 5 / 5 |" in md
    assert "Fair protocol: `ref_frac=0.5`" in md
    # task-clustered average: per task the mean of its experiments' mean gains, then a t-CI over 3 tasks
    for name, arm, base in (("Δ SAFLEX − X", "+saflex", ""), ("Δ SAFLEX − (X+ref)", "+saflex", "+ref")):
        per_task = []
        for task in (B, P, R):
            g = [np.mean([acc[(task, up + arm, s)] - acc[(task, up + base, s)] for s in SEEDS]) for up in UPS]
            per_task.append(np.mean(g))
        m, lo, hi = _ci(per_task)
        row = line(md, f"| {name} |")
        assert f"| {100 * m:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] |" in row, row
        assert f"| {100 * per_task[0]:+.2f} |" in row
    assert "2 degree(s) of freedom (4.30" in md and "with 3 tasks it is wide" in md


def test_fair_multiple_comparisons(tmp_path):
    acc = fair_store(tmp_path)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    p, excl = [], 0
    for (task, up) in EFFECTS:
        for base in ("", "+ref"):
            d = np.array([acc[(task, up + "+saflex", s)] - acc[(task, up + base, s)] for s in SEEDS])
            p.append(stats.ttest_rel([acc[(task, up + "+saflex", s)] for s in SEEDS],
                                     [acc[(task, up + base, s)] for s in SEEDS]).pvalue)
            _, lo, hi = _ci(d)
            excl += lo > 0 or hi < 0
    p = np.array(p)
    # Holm by hand: the k-th smallest p against alpha / (m - k), stop at the first failure
    n_holm = 0
    for k, pk in enumerate(np.sort(p)):
        if pk >= 0.05 / (len(p) - k):
            break
        n_holm += 1
    assert excl >= 2 and n_holm >= 1  # the store's strong experiment (breast/rand, +5 points) shows
    assert f"18 SAFLEX comparisons (9 experiments × vs X and vs X+ref where both ran)" in md
    assert "about 0.9 of 18 95 % CIs would exclude 0 by chance" in md
    assert f"Observed: {excl} exclude 0." in md
    assert f"Holm-adjusted over the 18: {n_holm} below 0.05; Bonferroni (p < 0.05/18): {int((p < 0.05 / 18).sum())}." in md
    assert len(re.findall(r"^\| \w+ \| [\w.-]+ \| vs X(\+ref)? \|", md, flags=re.M)) == 18


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005, max(., 3*0.01), max(., 2*0.03), max(., 1*0.04)
    np.testing.assert_allclose(holm(p)[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm(p)[4])


def test_fair_protocol_text_from_specs_no_paths_and_naming(tmp_path):
    fair_store(tmp_path)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    # generated protocol: model, optimiser, lr, batch, schedule, epochs per task, select metric, seeds, sizes
    assert "- Model `small_cnn`; optimiser adam, lr 0.001, weight decay 0, batch size 128; schedule multistep " \
           "(lr × 0.1 at 50 %, 75 % of the epochs)." in md
    assert "- Epochs per task: breastmnist 20; pneumoniamnist 5; retinamnist 20." in md
    assert "selection split's `auc`" in md and "- Seeds: 1–5." in md
    assert "| breastmnist | 546 | 39 | 39 | 156 | 0.64 | the runs' records |" in md
    assert "| pneumoniamnist | 4708 | 262 | 262 | 624 | 0.16 | the runs' records |" in md
    # knobs in force read from the runs; the arm named for what it is
    assert "SAFLEX arm: **SAFLEX, weights only (eps=0)**" in md and "`eps=0`" in md and "`weights=sigmoid`" in md
    assert "## X vs X+ref vs X+SAFLEX, weights only (eps=0) (test accuracy, points)" in md
    # tuning seeds vs comparison seeds
    assert "Seeds by group of runs: tuning 0; main comparison 1–5." in md
    assert "No seed of the comparisons took part in the tuning." in md
    assert "Selected: **`default`**" in md
    # the paper's figure named once, as the paper's; never a match
    assert md.count("the paper reports") == 1 and "match" not in md.lower()
    # no path of the machine (results root, run dirs) and no host name
    assert str(tmp_path) not in md and "/tmp" not in md and "/work" not in md and "somehost" not in md
    # a ± legend under every table with ± cells
    blocks = md.split("\n\n")
    for i, b in enumerate(blocks):
        if b.startswith("|") and "±" in b:
            assert "± = half-width" in blocks[i + 1] or "±" in blocks[i + 1], b[:80]
    # change spec values: the protocol text follows
    other = tmp_path / "other"
    fair_store(other, lr=5e-4, batch_size=64, tuning=False, stale=False)
    md2 = write_study(other, other / "study.md").read_text()
    assert "lr 0.0005" in md2 and "batch size 64" in md2 and "lr 0.001" not in md2
    assert "_No tuning runs found._" in md2


def test_noisy_label_recovery(tmp_path):
    up = "noisy(0.3,rand-m9-n2)"
    # breast (C=2): eps=0.6 recovers ~40 % of flipped labels, moves ~5 % of clean ones (chance 5 %)
    # retina (C=5): eps=0.6 recovers 2 %, moves 10 % of clean ones (chance 10 %/4 = 2.5 %)
    rec = {B: [0.40, 0.42, 0.38, 0.41, 0.39], R: [0.02, 0.03, 0.02, 0.025, 0.02]}
    mov = {B: [0.05, 0.06, 0.04, 0.05, 0.05], R: [0.10, 0.10, 0.12, 0.09, 0.10]}
    acc = {}
    for task in (B, R):
        for i, s in enumerate(SEEDS):
            x = 0.7 + 0.01 * i
            acc[(task, s)] = x
            kw = dict(data=SIZES[task], ref_frac=0.5, epochs=20)
            put(tmp_path, f"{task[9:]}-x-{s}", task, up, s, test=x, **kw)
            put(tmp_path, f"{task[9:]}-r-{s}", task, up + "+ref", s, test=x + 0.01, **kw)
            put(tmp_path, f"{task[9:]}-w-{s}", task, up + "+saflex", s, test=x + 0.02, last={"saflex_w_auc": 0.7 + 0.01 * i},
                knobs={"eps": 0.0}, **kw)
            put(tmp_path, f"{task[9:]}-m-{s}", task, up + "+saflex", s, test=x - 0.03 + 0.002 * (i % 2), knobs={"eps": 0.6},
                last={"saflex_w_auc": 0.6, "saflex_recovered_frac": rec[task][i], "saflex_clean_moved_frac": mov[task][i]}, **kw)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    assert "`noisy(0.3,rand-m9-n2)` (30 % of augmented labels flipped" in md
    rows = {arm: line(md, f"| breastmnist | {up} | {arm} |") for arm in
            ("X", "X+ref", "X+SAFLEX, weights only (eps=0)", "X+SAFLEX eps=0.6 (moves labels)")}
    auc = np.array([0.7 + 0.01 * i for i in range(5)])
    assert f"| {auc.mean():.3f} ± {(_ci(auc)[2] - _ci(auc)[1]) / 2:.3f} |" in rows["X+SAFLEX, weights only (eps=0)"]
    r, m = np.array(rec[B]), np.array(mov[B])
    cells = [c.strip() for c in rows["X+SAFLEX eps=0.6 (moves labels)"].strip("|").split("|")]
    assert cells[7] == f"{r.mean():.3f} ± {(_ci(r)[2] - _ci(r)[1]) / 2:.3f}"
    assert cells[8] == f"{m.mean():.3f} ± {(_ci(m)[2] - _ci(m)[1]) / 2:.3f}"
    assert cells[9].startswith(f"{m.mean():.3f}")  # C = 2: chance = clean moved / 1
    rr, mr = np.array(rec[R]), np.array(mov[R])
    retina = line(md, f"| retinamnist | {up} | X+SAFLEX eps=0.6 (moves labels) |")
    assert f"| {(mr / 4).mean():.3f} ±" in retina  # C = 5: chance = clean moved / 4
    # the plain sentences: breast recovers better than chance but costs test accuracy (-3 points paired);
    # retina's recovery is not above chance
    breast = line(md, "- breastmnist (C = 2")
    assert "Better than chance: yes" in breast and "it hurts (CI below 0)" in breast
    assert f"recovered − chance {(r - m).mean():.3f} ±" in breast
    # against weights only, paired: -3 - 2 = -5 points on even seeds, -4.8 on odd ones
    assert f"Against X+SAFLEX, weights only (eps=0): {pm([-0.05, -0.048, -0.05, -0.048, -0.05])} points paired" in breast
    retina_s = line(md, "- retinamnist (C = 5")
    lo, hi = _ci(rr - mr / 4)[1:]
    assert lo < 0 < hi and "Better than chance: not distinguishable (CI includes 0)" in retina_s
    # the summary repeats the verdicts
    assert "- Noisy upstream, label moving: breastmnist: X+SAFLEX eps=0.6 (moves labels) recovers flipped labels " \
           "better than chance" in md
    assert "- Noisy upstream, label moving: retinamnist: X+SAFLEX eps=0.6 (moves labels) does not recover" in md


def test_noise_floor_section_from_an_aa_pair(tmp_path):
    """Two regenerations of the same specs (A, B) -> per-key differences, agreement of conclusions, and a
    verdict for each of the study's gains against numerics and seeds; no machine path."""
    assert noise_floor_section(None) == []
    a, b = tmp_path / "aa1", tmp_path / "aa2"
    xa, sa = [0.80, 0.82, 0.84], [0.85, 0.86, 0.90]
    xb, sb = [0.80, 0.83, 0.84], [0.85, 0.86, 0.88]  # two runs moved: +1 and -2 points
    for root, xs, ss in ((a, xa, sa), (b, xb, sb)):
        for seed in range(3):
            put(root, f"x{seed}", B, "mixup-a0.2", seed, test=xs[seed])
            put(root, f"s{seed}", B, "mixup-a0.2+saflex", seed, test=ss[seed])
    main = runs_frame(a)
    md = "\n".join(noise_floor_section((runs_frame(a), runs_frame(b)), main))
    diffs = np.array([0, 0.01, 0, 0, 0, -0.02])
    assert f"2 of 6 runs end with a different test accuracy; mean |Δ| {100 * np.abs(diffs).mean():.2f}, " \
           f"sd {100 * diffs.std(ddof=1):.2f}, max |Δ| 2.00 points" in md
    assert "1 of 1 agree between A and B" in md  # the gain's sign and CI verdict are the same in A and B
    assert "| breastmnist | mixup-a0.2 | saflex | 3 | +5.00 |" in md
    assert str(tmp_path) not in md and "results store 'aa1'" in md
    from reports.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["study", "noise_floor", "--build-table", "A", "B"])
    assert args.name == "noise_floor" and args.build_table == ["A", "B"]
    fair_store(tmp_path / "fair", tuning=False, stale=False)
    md = write_study(tmp_path / "fair", tmp_path / "study.md").read_text()
    assert "not measured in this report (no A/A results given)" in md
    assert "one test image is 0.64 points on breastmnist (156 images)" in md


# ---- SAFLEX's default moved (issue 18): first-release default vs today's, side by side ------------
def test_first_and_todays_default_side_by_side(tmp_path):
    """The first-release default's runs are labelled by their knobs (stored specs lack the later knobs:
    they ran at ref_ema 0, not at whatever today's default is), stay the main arm until today's default
    has run every experiment, and the side-by-side table pairs each setting's gains by seed, the interim
    default's where it ran."""
    from bench.spec import LATER_SAFLEX_KNOBS

    FIRST_SAFLEX_DEFAULTS, INTERIM_SAFLEX_DEFAULTS = _report.FIRST_SAFLEX_DEFAULTS, _report.INTERIM_SAFLEX_DEFAULTS

    acc = fair_store(tmp_path, tuning=False, stale=False)
    old = {k: v for k, v in FIRST_SAFLEX_DEFAULTS.items() if k not in LATER_SAFLEX_KNOBS}  # as first stored
    for p in (tmp_path / "runs").glob("*_saflex-*"):
        rec = json.loads((p / "result.json").read_text())
        rec["spec"]["saflex"] = {k: v for k, v in {**rec["spec"]["saflex"], **old}.items() if k not in LATER_SAFLEX_KNOBS}
        rec.pop("semantics")  # as first stored: before semantics versions
        (p / "result.json").write_text(json.dumps(rec))
    rng = np.random.default_rng(1)
    new, mid = {}, {}
    for (task, up), _ in EFFECTS.items():
        ep = 5 if task == P else 20
        for s in SEEDS:
            if task == R and up == "mixup-a0.2" and s == 5:
                continue  # today's default is one run short: the main arm stays the first default
            v = new[(task, up, s)] = round(acc[(task, up, s)] + 0.02 + rng.normal(0, 0.01), 4)
            put(tmp_path, f"new-{task[9:]}-{up}-{s}", task, f"{up}+saflex", s, test=v, data=SIZES[task],
                ref_frac=0.5, epochs=ep)
            if task == B:  # the interim default ran on Breast only
                v = mid[(task, up, s)] = round(acc[(task, up, s)] - 0.03 + rng.normal(0, 0.01), 4)
                put(tmp_path, f"mid-{task[9:]}-{up}-{s}", task, f"{up}+saflex", s, test=v, data=SIZES[task],
                    ref_frac=0.5, epochs=ep, knobs=INTERIM_SAFLEX_DEFAULTS)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    assert "SAFLEX arm: **SAFLEX, weights only (eps=0; first-release reference step)**" in md
    sec = md.split("## SAFLEX's default reference step: first release, interim, today (paired)")[1].split("\n## ")[0]
    x = np.array([acc[(B, "cutmix-a1.0", s)] for s in SEEDS])
    o = np.array([acc[(B, "cutmix-a1.0+saflex", s)] for s in SEEDS])
    n = np.array([new[(B, "cutmix-a1.0", s)] for s in SEEDS])
    m = np.array([mid[(B, "cutmix-a1.0", s)] for s in SEEDS])
    row = line(sec.strip(), "| breastmnist | cutmix-a1.0 |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:7] == ["5", pm(o - x), pm(m - x), pm(n - x), pm(n - o)], cells
    cells = [c.strip() for c in line(sec.strip(), "| retinamnist | mixup-a0.2 |").strip("|").split("|")]
    assert cells[2] == "4" and cells[4] == "–"  # no interim runs on Retina
    # the summary counts the experiments whose paired today − first CI excludes 0, on either side
    exps = [(t, u) for (t, u) in EFFECTS]
    n_seeds = {(t, u): [s for s in SEEDS if (t, u, s) in new] for t, u in exps}
    lower = sum(1 for t, u in exps if (lambda d: _ci(d)[2] < 0)(
        np.array([new[(t, u, s)] - acc[(t, f"{u}+saflex", s)] for s in n_seeds[(t, u)]])))
    verdict = line(md, "- SAFLEX's default moved from")
    assert f"today's default is lower in {lower} (" in verdict and f"of {len(exps)}" in verdict
    # the last run arrives: today's default becomes the main arm
    put(tmp_path, "new-last", R, "mixup-a0.2+saflex", 5, test=0.5, data=SIZES[R], ref_frac=0.5, epochs=20)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    assert "SAFLEX arm: **SAFLEX, weights only (eps=0)**" in md
    assert "## SAFLEX's default reference step: first release, interim, today (paired)" in md


# ---- the study's results table: what the report reads, kept without run folders --------------------
def _body(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if not ln.startswith("_Generated by")]  # all but the timestamp line


def _full_store(tmp_path):
    """A fair store with noisy runs (label-recovery logs), SAFLEX weight files, and an A/A pair."""
    root = tmp_path / "store"
    fair_store(root)
    up = "noisy(0.3,rand-m9-n2)"
    for i, s in enumerate(SEEDS):
        kw = dict(data=SIZES[B], ref_frac=0.5, epochs=20)
        put(root, f"nx-{s}", B, up, s, test=0.7 + 0.01 * i, **kw)
        put(root, f"nm-{s}", B, up + "+saflex", s, test=0.69 + 0.01 * i, knobs={"eps": 0.6}, **kw,
            last={"saflex_w_auc": 0.6 + 0.01 * i, "saflex_recovered_frac": 0.3, "saflex_clean_moved_frac": 0.05 + 0.01 * i,
                  "saflex_label_shift": 0.1, "saflex_argmax_change": 0.02, "saflex_s": 0.5, "epoch_s": 2.0})
    for i, p in enumerate(sorted((root / "runs").glob("breastmnist-*_saflex-*"))):
        np.savez(p / "saflex_diag.npz", w=np.linspace(0.1, 1.9 - 0.1 * i, 8).astype(np.float32),
                 label_shift=np.zeros(8, np.float32), corrupted=np.arange(8) < 2)
    aa = (tmp_path / "aa1", tmp_path / "aa2")
    for r, xs in zip(aa, ([0.80, 0.82, 0.84], [0.80, 0.83, 0.84])):
        for seed in range(3):
            put(r, f"x{seed}", B, "mixup-a0.2", seed, test=xs[seed])
            put(r, f"s{seed}", B, "mixup-a0.2+saflex", seed, test=xs[seed] + 0.03)
    return root, aa


def test_the_report_from_the_table_is_the_report_from_the_run_folders(tmp_path):
    from reports.study_loader import load_study

    root, aa = _full_store(tmp_path)
    study, floor = load_study("saflex_medmnist"), load_study("noise_floor")
    direct = write_study(root, tmp_path / "direct.md", aa_root=aa).read_text()
    study.build_table([root], tmp_path / "table")
    floor.build_table(list(aa), tmp_path / "aa_table")
    out = study.write_report(tmp_path / "table", tmp_path / "via.md", aa_table=tmp_path / "aa_table")[0]
    via = out.read_text()
    assert _body(via) == _body(direct)
    # the parts that read more than the run records are there, from the table
    assert "## What SAFLEX" in via and "## Noise floor: what numerics alone move" in via
    assert "| breastmnist | noisy(0.3,rand-m9-n2) | X+SAFLEX eps=0.6 (moves labels) | 5 |" in via
    assert "results store 'aa1'" in via and "results store 'store'" in via and str(tmp_path) not in via


def test_the_table_round_trips_exactly(tmp_path):
    """Every cell comes back as it went in: dtype, column order, None vs NaN, floats to the last bit."""
    import pandas as pd

    from reports.study_table import epochs_frame, read_table, saflex_diag_frame, write_table

    root, _ = _full_store(tmp_path)
    runs = runs_frame(root)
    frames = {"runs": runs, "epochs": epochs_frame(root, runs["key"]), "saflex_diag": saflex_diag_frame(root, runs["key"])}
    assert len(frames["saflex_diag"]) == 15 and frames["epochs"]["key"].nunique() == 5
    runs.loc[0, "sweep"] = None  # an object column with None beside NaN
    runs.loc[1, "metrics.test_acc"] = 0.1 + 0.2  # not a short decimal
    write_table(tmp_path / "t", frames, {"study": "x"})
    back, meta = read_table(tmp_path / "t")
    assert meta == {"study": "x"} and sorted(back) == sorted(frames)
    for name, df in frames.items():
        pd.testing.assert_frame_equal(back[name], df, check_exact=True)
        for c in df.columns:
            assert [repr(v) for v in back[name][c]] == [repr(v) for v in df[c]], (name, c)
    assert back["runs"].attrs["source"] == "store"
    assert "run_dir" not in back["runs"]  # no machine path in a committed table


def test_a_table_of_another_schema_version_is_refused(tmp_path):
    from bench.errors import UsageError
    from reports.study_table import read_table, write_table

    root, _ = _full_store(tmp_path)
    write_table(tmp_path / "t", {"runs": runs_frame(root)})
    meta = json.loads((tmp_path / "t" / "table.json").read_text())
    (tmp_path / "t" / "table.json").write_text(json.dumps({**meta, "schema_version": 0}))
    with pytest.raises(UsageError, match="schema version 0; this code reads 1"):
        read_table(tmp_path / "t")
    with pytest.raises(UsageError, match="no study table at"):
        read_table(tmp_path / "nowhere")


# ---- the rule the tuning seed chose, once its reruns are in --------------------------------------------
def _with_epochs(root, majority=0.5):
    """Every run gets a recorded selection majority and two logged epochs: val AUC picks epoch 1, whose
    selection accuracy is degenerate on the tuning seed; val loss picks epoch 2, which is not."""
    for d in (root / "runs").iterdir():
        rec = json.loads((d / "result.json").read_text())
        rec["info"] = {"select_majority": majority}
        (d / "result.json").write_text(json.dumps(rec))
        eps = [dict(epoch=1, val_acc=0.4, val_auc=0.9, val_loss=0.9), dict(epoch=2, val_acc=0.8, val_auc=0.8, val_loss=0.4)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))


def test_summary_leads_with_the_rule_chosen_on_the_tuning_seed_once_its_reruns_are_complete(tmp_path):
    acc = fair_store(tmp_path, tuning=False, stale=False)
    for task, up in EFFECTS:  # the tuning seed's runs of the main comparison
        for m in (up, f"{up}+ref", f"{up}+saflex"):
            put(tmp_path, f"s0-{task[9:]}-{m}".replace("+", "_"), task, m, 0, test=0.5, data=SIZES[task], ref_frac=0.5,
                epochs=5 if task == P else 20)
    # the reported runs rerun under val loss: SAFLEX 3 points under X everywhere, X+ref = X
    for (task, m, s), v in acc.items():
        up = m.split("+")[0]
        new = acc[(task, up, s)] - (0.03 if m.endswith("+saflex") else 0.0)
        put(tmp_path, f"L-{task[9:]}-{m}-{s}".replace("+", "_"), task, m, s, test=new, data=SIZES[task], ref_frac=0.5,
            epochs=5 if task == P else 20, select_metric="loss")
    _with_epochs(tmp_path)
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    summary = md.split("## Summary")[1]
    first = summary.strip().splitlines()[0]
    assert first.startswith("- Under val_loss (the selection rule chosen on the tuning seed; 135 runs rerun under it): ")
    assert "− X, task-clustered over 3 tasks: accuracy -3.00 [-3.00, -3.00]" in first
    assert "### Conclusions under val_loss (chosen on the tuning seed; 135 runs rerun under it)" in md
    # the paper-layout table is the comparison under that rule too: SAFLEX − X is −3.0 in every row
    tex = _report.main_table_tex(_report.study_data(tmp_path))
    assert "selected on val\\_loss (chosen on the tuning seed)" in tex and tex.count("-3.0 [-3.0, -3.0]") == 36  # 9 rows x (acc, AUC) x (vs X, vs X+ref)
    # one rerun missing: the conclusions, the summary and the table stay under the stored rule, and say so
    shutil.rmtree(tmp_path / "runs" / "L-breastmnist-rand-m9-n2_saflex-1")
    md = write_study(tmp_path, tmp_path / "study.md").read_text()
    assert "Under val_loss" not in md.split("## Summary")[1]
    assert "under val_loss 134 of the 135 reruns are in" in md
    tex = _report.main_table_tex(_report.study_data(tmp_path))
    assert "selected on val\\_auc (the rule the runs were stored under)" in tex and "-3.0 [-3.0, -3.0]" not in tex
