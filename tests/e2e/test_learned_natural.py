"""The learned-augmentation learners (augerino, augnet, adautomix, softaug) on a natural-image task
(natural/cifar10: 3-channel, 32 px), from the CLI and in a sweep + report.

Each run is tiny (10 images per class, 20 % held out, 5 test images per class, 1 epoch, small_cnn,
batch 16): a few seconds on a busy 2-core machine. The CIFAR-10 file is the shared JPEG copy
(<shared>/images/cifar10_jpeg_subset.npz); every test that needs it skips when it is absent.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA

from bench.cli import main as cli_main

CIFAR_NPZ = SHARED_DATA / "images" / "cifar10_jpeg_subset.npz"
TASK = "natural/cifar10"
TINY = ["--set", "task.train_per_class=10", "--set", "task.val_frac=0.2", "--set", "task.test_per_class=5"]
TRAIN_IMAGES = 80  # 10 per class, 2 of them held out
BATCH = 16
STEPS = TRAIN_IMAGES // BATCH + (TRAIN_IMAGES % BATCH > 0)


@pytest.fixture
def cifar_root():
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"{CIFAR_NPZ} not found")
    return SHARED_DATA


def run_cli(capsys, results: Path, root: Path, method: str, *extra: str) -> Path:
    """`saflex-bench run` in process; returns the run directory (from the `result <path>` line)."""
    code = cli_main(["run", "--task", TASK, "--method", method, "--epochs", "1", "--model", "small_cnn",
                     "--batch-size", str(BATCH), *TINY, "--data-root", str(root), "--results", str(results),
                     "--wandb", "disabled", "--quiet", "--keep-checkpoints", "full", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    (line,) = [ln for ln in out.splitlines() if ln.startswith("result ")]
    return Path(line.split(" ", 1)[1]).parent


def check_record(run_dir: Path, method: str) -> tuple[dict, dict]:
    """result.json is complete, its metrics finite, its cost has learner_s and step_s; returns
    (record, the one metrics.jsonl row)."""
    rec = json.loads((run_dir / "result.json").read_text())
    assert rec["status"] == "done" and rec["spec"]["method"] == method and rec["spec"]["task"] == TASK
    assert rec["spec"]["model"] == "small_cnn" and rec["data"]["train"] == TRAIN_IMAGES
    m = rec["metrics"]
    assert m["epochs_run"] == 1 and m["best_epoch"] == 1
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, (int, float))), m
    assert 0 <= m["test_acc"] <= 1 and 0 <= m["test_auc"] <= 1 and 0 <= m["val_acc"] <= 1
    cost = rec["cost"]
    assert cost["learner_s"] > 0 and cost["step_s"] > 0 and math.isfinite(cost["step_s"])
    (row,) = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(row["train_loss"])
    return rec, row


def learner_state(run_dir: Path) -> dict:
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == STEPS
    return ck["learner"]


# ---- one run per learner from the CLI ----------------------------------------------------------
@pytest.mark.parametrize("upstream", ["rand-m9-n2", "cutmix-a1.0"])
def test_augerino_widths_train_on_rgb(upstream, cifar_root, tmp_path, capsys):
    method = f"{upstream}+augerino"
    _, row = check_record(run_dir := run_cli(capsys, tmp_path, cifar_root, method), method)
    widths = torch.nn.functional.softplus(learner_state(run_dir)["width"])
    assert widths.shape == (6,) and torch.isfinite(widths).all()
    assert not torch.allclose(widths, torch.full((6,), math.log(2.0))), "widths never left their init (ln 2)"
    logged = [row[f"augerino_width_{g}"] for g in ("translate_x", "translate_y", "rotate", "scale", "stretch", "shear")]
    assert logged == pytest.approx(widths.tolist()) and math.isfinite(row["augerino_data_loss"])


@pytest.mark.parametrize("upstream", ["rand-m9-n2", "cutmix-a1.0"])
def test_augnet_layers_train_on_rgb(upstream, cifar_root, tmp_path, capsys):
    from bench.learners.augnet import TRANSFORMS

    method = f"{upstream}+augnet"
    _, row = check_record(run_dir := run_cli(capsys, tmp_path, cifar_root, method), method)
    module = learner_state(run_dir)["module"]
    for i in range(2):  # default: 2 layers
        mu = module[f"{i}.magnitude_raw"].clamp(0, 1)
        w = torch.softmax(module[f"{i}.weight_logits"] / 0.01, 0)
        assert not torch.allclose(mu, torch.full_like(mu, 0.5)), f"layer {i}'s magnitudes never left their init"
        assert not torch.allclose(w, torch.full_like(w, 1 / len(TRANSFORMS))), f"layer {i}'s weights never moved"
        assert [row[f"augnet_l{i}_{t}_mu"] for t in TRANSFORMS] == pytest.approx(mu.tolist())


def test_adautomix_generator_trains_on_rgb(cifar_root, tmp_path, capsys):
    from bench.learners.base import LearnerContext, get_learner_class
    from bench.seeding import generator
    from bench.spec import make_spec
    from bench.tasks import get_task

    method = "rand-m9-n2+adautomix"
    rec, row = check_record(run_dir := run_cli(capsys, tmp_path, cifar_root, method), method)
    state = learner_state(run_dir)
    assert {"generator", "gen_opt", "teacher"} <= set(state)
    assert state["gen_opt"]["state"][0]["step"] == STEPS  # one generator step per classifier step
    # the generator reads the feature map of the RGB model (small_cnn's last conv) ...
    task = get_task(TASK)
    spec = make_spec(TASK, method, 0, {"epochs": 1, "model": "small_cnn", "batch_size": BATCH,
                                       **{f"task.{k}": v for k, v in (("train_per_class", 10), ("val_frac", 0.2),
                                                                      ("test_per_class", 5))}})
    assert spec.key == rec["key"]
    torch.manual_seed(0)
    ctx = LearnerContext(spec=spec, task=task, model=task.build_model(spec), device=torch.device("cpu"), reference=None,
                         run_dir=tmp_path, autocast=contextlib.nullcontext, generator=functools.partial(generator, 0))
    fresh = get_learner_class("adautomix")(ctx, spec.knobs)
    init = fresh.generator.state_dict()
    assert state["generator"]["q.0.weight"].shape == init["q.0.weight"].shape
    # ... and moved away from its (seeded) init
    assert any(not torch.equal(state["generator"][k], v) for k, v in init.items())
    assert all(torch.isfinite(v).all() for v in state["generator"].values())
    assert 0 < row["adautomix_mask_area"] < 1 and math.isfinite(row["adautomix_gen_loss"])
    assert 0 < row["adautomix_adv_steps"] < 1  # adversarial and cooperative steps alternate
    # mixes of 3-channel images at 32 px: masks [B, m, 32, 32] summing to one per pixel
    x = task.prepare(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    (perms, lam), _ = fresh.draw(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = fresh.teacher_maps(x)
        masks = fresh.masks(maps, perms, lam, x.shape[-2:])
        x_mix = fresh.apply(x, perms, masks)
    assert masks.shape == (4, len(perms), 32, 32) and torch.allclose(masks.sum(1), torch.ones(4, 32, 32), atol=1e-5)
    assert x_mix.shape == x.shape


def test_softaug_crops_and_softens_rgb(cifar_root, tmp_path, capsys):
    method = "rand-m9-n2+softaug"
    _, row = check_record(run_cli(capsys, tmp_path, cifar_root, method), method)
    assert 0 < row["softaug_visibility"] < 1  # crops happened
    assert 0.1 < row["softaug_confidence"] < 1  # targets softened, above chance (p_min = 1/10)


def test_softaug_fills_a_random_colour_per_image_in_every_channel(tmp_path):
    """The uncovered part of a crop is one random colour per image: N(0, bg_std^2) per channel in the
    task's normalised input (the original's background), so the three RGB channels differ."""
    import functools as ft

    from bench.learners.base import LearnerContext
    from bench.learners.softaug import SoftAugmentation
    from bench.seeding import generator
    from bench.spec import make_spec
    from bench.tasks import get_task

    task = get_task(TASK)
    spec = make_spec(TASK, "rand-m9-n2+softaug", 0, {"model": "small_cnn", "softaug.bg_std": 1.0, "softaug.sigma": 0.6})
    ctx = LearnerContext(spec=spec, task=task, model=None, device=torch.device("cpu"), reference=None, run_dir=tmp_path,
                         autocast=contextlib.nullcontext, generator=ft.partial(generator, 0))
    learner = SoftAugmentation(ctx, spec.knobs)
    x = torch.full((32, 3, 32, 32), 50.0)
    xs, _, vis, _ = learner.crop_and_soften(x, task.targets(torch.zeros(32).long()), ctx.generator("softaug", 0, 0))
    i = int(torch.argmin(vis))
    uncovered = xs[i][:, (xs[i] != 50.0).all(0)]  # [3, pixels]
    assert uncovered.shape[1] > 0 and torch.allclose(uncovered, uncovered[:, :1].expand_as(uncovered))
    assert len(set(uncovered[:, 0].tolist())) == 3


@pytest.mark.parametrize("task_name,size", [("natural/cifar10", 32), ("natural/tinyimagenet", 64)])
@pytest.mark.parametrize("name", ["augerino", "augnet", "adautomix", "softaug"])
def test_one_step_on_rgb_inputs_of_each_natural_size(name, task_name, size, tmp_path):
    """No data file needed: one training step of each learner on random RGB images of the task's size
    through the task's model (small_cnn) — finite loss, gradients into the model and the learner's own
    parameters, and (adautomix) masks at the image size."""
    from bench.learners.base import LearnerContext, StepBatch, get_learner_class
    from bench.seeding import generator
    from bench.spec import make_spec
    from bench.tasks import get_task

    task = get_task(task_name)
    spec = make_spec(task_name, f"rand-m9-n2+{name}", 0, {"epochs": 1, "model": "small_cnn"})
    torch.manual_seed(0)
    model = task.build_model(spec)
    ctx = LearnerContext(spec=spec, task=task, model=model, device=torch.device("cpu"), reference=None,
                         run_dir=tmp_path, autocast=contextlib.nullcontext, generator=functools.partial(generator, 0))
    learner = get_learner_class(name)(ctx, spec.knobs)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, task.num_classes, (8,), generator=g)
    x = task.prepare(torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=g))
    batch = StepBatch(x=x, y_soft=task.targets(y), clean=x, y=y, corrupted=None, epoch=0, index=0, step=0)
    model.train()
    loss, logits = learner.loss(batch)
    assert logits.shape == (8, task.num_classes) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    for p in learner.extra_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    learner.after_step(batch)
    model.eval()
    with torch.no_grad():
        assert learner.predict(x).shape == (8, task.num_classes)
    if name == "adautomix":
        (perms, lam), _ = learner.draw(8, torch.Generator().manual_seed(1))
        with torch.no_grad():
            maps = learner.teacher_maps(x)
            masks = learner.masks(maps, perms, lam, x.shape[-2:])
        assert masks.shape == (8, len(perms), size, size)
        assert torch.allclose(masks.sum(1), torch.ones(8, size, size), atol=1e-5)


# ---- a sweep over the learners, then the report --------------------------------------------------
def test_sweep_and_report_show_learners_with_overhead(cifar_root, tmp_path, capsys):
    arms = ["rand-m9-n2", "rand-m9-n2+augerino", "rand-m9-n2+adautomix", "rand-m9-n2+softaug"]
    path = tmp_path / "natlearn.yaml"
    path.write_text(textwrap.dedent(f"""
        name: natlearn
        fixed: {{model: small_cnn, epochs: 1, batch_size: {BATCH}, task.val_frac: 0.2}}
        grid:
          - task: [{TASK}]
            method: [{", ".join(arms)}]
            seed: [0]
            task.train_per_class: [10]
            task.test_per_class: [5]
    """))
    results = tmp_path / "results"
    code = cli_main(["sweep", str(path), "--executor", "debug", "--results", str(results), "--data-root", str(cifar_root),
                     "--wandb", "disabled"])
    out, err = capsys.readouterr()
    assert code == 0 and "planned 4 |" in out and "done 4 / failed 0" in out, out + err
    recs = [json.loads(p.read_text()) for p in results.glob("runs/*/result.json")]
    assert sorted(r["spec"]["method"] for r in recs) == sorted(arms)
    assert all(r["status"] == "done" and r["sweep"] == "natlearn" and r["cost"]["step_s"] > 0 for r in recs)

    out_dir = tmp_path / "report"
    code = cli_main(["report", "--results", str(results), "--sweep", "natlearn", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "loaded 4 done runs" in out
    table = pd.read_csv(out_dir / "table.csv")
    assert sorted(table["learner"]) == ["adautomix", "augerino", "softaug"]
    assert set(table["task"]) == {TASK} and set(table["upstream"]) == {"rand-m9-n2"}
    step = {r["spec"]["method"]: r["cost"]["step_s"] for r in recs}
    for _, r in table.iterrows():
        assert r["overhead_step_s"] == pytest.approx(step[f"rand-m9-n2+{r['learner']}"] / step["rand-m9-n2"])
    md = (out_dir / "table.md").read_text()
    lines = md.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("|") and "overhead" in ln)  # the long table
    cols = [c.strip() for c in lines[at].strip("|").split("|")]
    block = [ln for ln in itertools.takewhile(lambda ln: ln.startswith("|"), lines[at + 2:])]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in block if TASK in ln]
    assert len(rows) == 3
    over = cols.index("overhead")
    for r in rows:
        assert r[over].startswith("×") and float(r[over][1:]) > 0
    assert md in out  # the command prints the Markdown table
