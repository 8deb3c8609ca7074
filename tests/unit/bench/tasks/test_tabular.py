"""The tabular task family (PMLB, UCI Adult) and the tabular upstream policies."""
import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA

import baselines
import baselines.tabular  # noqa: F401  (registers the tabular policies; see docs/tabular.md)
from baselines.tabular import FeatureMixUp, GaussianNoise, Scarf, Smote, TabularCutMix
from bench.cli import main
from bench.errors import UsageError
from bench.tasks import get_task, supports

PMLB = SHARED_DATA / "tabular" / "pmlb"
ADULT = SHARED_DATA / "tabular" / "uci_adult"


@pytest.fixture
def pmlb_root():
    if not (PMLB / "INDEX.tsv").is_file():
        pytest.skip(f"PMLB datasets not found under {PMLB}")
    return PMLB


@pytest.fixture
def adult_root():
    if not (ADULT / "adult.data.gz").is_file():
        pytest.skip(f"UCI Adult files not found under {ADULT}")
    return SHARED_DATA  # the root form: tabular/uci_adult below it


def index_row(name):
    import csv

    rows = {r["dataset"]: r for r in csv.DictReader(open(PMLB / "INDEX.tsv"), delimiter="\t")}
    return {k: int(v) for k, v in rows[name].items() if k in ("rows", "features", "n_classes", "min_class_count")}


def cli_run(results, task, method, root, *sets, epochs=1):
    args = ["run", "--task", task, "--method", method, "--seed", "0", "--epochs", str(epochs), "--results",
            str(results), "--data-root", str(root), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    (record,) = [json.loads(p.read_text()) for p in results.glob("runs/*/result.json")
                 if json.loads(p.read_text())["spec"]["method"] == method and json.loads(p.read_text())["spec"]["task"] == task]
    return record


def load(task, root, **options):
    from bench.spec import make_spec

    spec = make_spec(task, "none", 0, {f"task.{k}": v for k, v in options.items()})
    return get_task(task).load(root, spec)


# ---- PMLB from the CLI -------------------------------------------------------------------------
# credit_g: categorical features (metadata.yaml); letter: 26 classes; analcatdata_fraud: 42 rows;
# adult (PMLB copy): 48842 rows, the largest of the shared sets a CPU test trains in seconds
@pytest.mark.parametrize("name", ["credit_g", "letter", "analcatdata_fraud", "adult"])
def test_pmlb_dataset_trains_one_epoch_from_the_cli(pmlb_root, results, name):
    rec = cli_run(results, f"tabular/pmlb:{name}", "none", pmlb_root)
    idx = index_row(name)
    assert rec["status"] == "done"
    assert rec["data"]["train"] + rec["data"]["val"] + rec["data"]["test"] == idx["rows"]
    for split in ("val", "test"):
        for m in ("acc", "auc", "bacc", "f1"):
            assert 0.0 <= rec["metrics"][f"{split}_{m}"] <= 1.0, (split, m)
    assert rec["spec"]["options"]["val_frac"] == 0.2 and rec["spec"]["options"]["test_frac"] == 0.2


@pytest.mark.slow
def test_pmlb_run_through_python_m_bench_cli(pmlb_root, results):
    out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--task", "tabular/pmlb:credit_g", "--method",
                          "scarf-p0.3", "--epochs", "1", "--results", str(results), "--data-root", str(pmlb_root),
                          "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "test_acc" in out.stdout


def test_categorical_columns_from_metadata_are_one_hot(pmlb_root):
    data = load("tabular/pmlb:credit_g", pmlb_root)
    assert len(data.info["categorical"]) > 0 and "checking_status" in data.info["categorical"]
    assert data.train.x.shape[1] > index_row("credit_g")["features"]  # one-hot widened the matrix
    assert data.train.x.dtype == torch.float32


def test_split_is_stratified_disjoint_and_fixed_by_split_seed(pmlb_root):
    a = load("tabular/pmlb:credit_g", pmlb_root)
    b = load("tabular/pmlb:credit_g", pmlb_root)
    c = load("tabular/pmlb:credit_g", pmlb_root, split_seed=1)
    assert torch.equal(a.select.x, b.select.x)
    assert not torch.equal(a.select.x, c.select.x)
    assert (len(a.train), len(a.select), len(a.tests["test"])) == (600, 200, 200)
    for split in (a.select, a.tests["test"]):  # 30% bad credit everywhere
        assert float(split.y.float().mean()) == pytest.approx(float(a.train.y.float().mean()), abs=0.01)
    rows = {tuple(r) for r in a.train.x.tolist()}
    assert len(rows & {tuple(r) for r in a.tests["test"].x.tolist()}) < 3  # only duplicate rows can collide


def test_preprocessing_is_fitted_on_train_only(pmlb_root):
    data = load("tabular/pmlb:pima", pmlb_root)
    assert torch.allclose(data.train.x.mean(0), torch.zeros(data.train.x.shape[1]), atol=1e-4)
    assert torch.allclose(data.train.x.std(0, unbiased=False), torch.ones(data.train.x.shape[1]), atol=1e-3)
    assert not torch.allclose(data.tests["test"].x.mean(0), torch.zeros(data.train.x.shape[1]), atol=1e-3)


def test_rare_class_stays_in_train_and_metrics_survive_absent_classes(pmlb_root, results):
    data = load("tabular/pmlb:lymphography", pmlb_root)  # classes of 2 and 4 rows
    (rare,) = data.info["train_only_classes"]
    assert data.info["train_class_counts"][rare] == 2  # both rows in train
    assert rare not in data.select.y.tolist() and rare not in data.tests["test"].y.tolist()
    other = data.info["train_class_counts"].index(2, rare + 1) if rare == 0 else 0  # the 4-row class: split
    assert other in data.select.y.tolist() and other in data.tests["test"].y.tolist()
    rec = cli_run(results, "tabular/pmlb:lymphography", "none", pmlb_root)
    assert math.isfinite(rec["metrics"]["test_auc"])


def test_data_root_may_be_the_shared_root_or_the_pmlb_folder(pmlb_root):
    a = load("tabular/pmlb:pima", pmlb_root)
    b = load("tabular/pmlb:pima", pmlb_root.parent.parent)
    assert torch.equal(a.train.x, b.train.x)


def test_wrong_name_lists_close_matches(pmlb_root):
    with pytest.raises(UsageError, match="close matches: credit_g"):
        load("tabular/pmlb:credit_gg", pmlb_root)
    assert "credit_g" in get_task("tabular/pmlb:credit_gg").check_data(pmlb_root)


def test_any_dataset_in_the_pmlb_layout_loads_with_the_integer_rule(tmp_path):
    """No shared data needed: a made-up dataset without metadata.yaml, labels not 0..K-1."""
    rng = np.random.default_rng(0)
    n = 300
    cols = {"num": rng.normal(size=n), "code": rng.integers(0, 5, n), "flag": rng.integers(0, 2, n),
            "many": rng.integers(0, 50, n), "target": rng.choice([3, 7, 11], n)}
    (tmp_path / "toy").mkdir()
    lines = ["\t".join(cols)] + ["\t".join(str(cols[c][i]) for c in cols) for i in range(n)]
    with gzip.open(tmp_path / "toy" / "toy.tsv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    data = load("tabular/pmlb:toy", tmp_path)
    assert data.info["categorical"] == ["code"]  # 5 integer levels; 2 (flag) and 50 (many) stay numeric
    assert data.train.x.shape[1] == 3 + 5
    assert sorted(torch.unique(data.train.y).tolist()) == [0, 1, 2]
    assert get_task("tabular/pmlb:toy").num_classes == 3


# ---- UCI Adult ----------------------------------------------------------------------------------
def test_adult_official_split_sizes_and_label_balance(adult_root):
    data = load("tabular/adult", adult_root)
    assert len(data.train) + len(data.select) == 32561
    assert len(data.select) == pytest.approx(0.2 * 32561, abs=2)
    assert len(data.tests["test"]) == 16281
    pos_train = (int(data.train.y.sum()) + int(data.select.y.sum())) / 32561
    assert pos_train == pytest.approx(7841 / 32561, abs=1e-9)  # UCI: 24.08% >50K in adult.data
    assert float(data.tests["test"].y.float().mean()) == pytest.approx(3846 / 16281, abs=1e-9)  # 23.62%
    assert float(data.select.y.float().mean()) == pytest.approx(0.2408, abs=0.002)  # stratified
    assert not torch.isnan(data.train.x).any() and not torch.isnan(data.tests["test"].x).any()


def test_adult_subsample_and_cli(adult_root, results):
    rec = cli_run(results, "tabular/adult", "gauss-s0.1", adult_root, "task.max_train_rows=1000", epochs=5)
    assert rec["data"]["train"] == 1000 and rec["data"]["test"] == 16281
    assert rec["metrics"]["test_auc"] > 0.8  # well above chance after 40 steps (measured 0.88)


# ---- metrics and models --------------------------------------------------------------------------
def test_auc_is_one_vs_rest_and_robust_to_absent_classes():
    from sklearn.metrics import roc_auc_score

    from bench.tasks.tabular import tabular_metrics

    rng = np.random.default_rng(0)
    prob = rng.dirichlet(np.ones(3), size=40)
    y = rng.integers(0, 2, 40)  # class 2 absent
    m = tabular_metrics(prob, y, 3)
    expected = np.mean([roc_auc_score(y == c, prob[:, c]) for c in (0, 1)])
    assert m["auc"] == pytest.approx(expected)
    assert math.isnan(tabular_metrics(prob, np.zeros(40, dtype=int), 3)["auc"])
    p2 = rng.dirichlet(np.ones(2), size=40)
    assert tabular_metrics(p2, y, 2)["auc"] == pytest.approx(roc_auc_score(y, p2[:, 1]))


@pytest.mark.parametrize("model", ["mlp", "tabresnet"])
def test_models_have_features_and_a_linear_head(model):
    from bench.tasks.tabular import build_tabular_model

    net = build_tabular_model(model, 7, 4, depth=3, width=16, dropout=0.1).eval()
    x = torch.randn(5, 7)
    h = net.features(x)
    assert h.shape == (5, 16) and isinstance(net.head, torch.nn.Linear)
    assert torch.allclose(net(x), net.head(h))
    if model == "tabresnet":
        assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 4  # 3 blocks + final


def test_model_names_are_validated(pmlb_root):
    from bench.spec import make_spec

    with pytest.raises(UsageError, match="mlp, tabresnet"):
        make_spec("tabular/pmlb:pima", "none", 0, {"model": "resnet18"})
    assert make_spec("tabular/pmlb:pima", "none", 0, {"model": "tabresnet"}).model == "tabresnet"


# ---- the upstream policies ----------------------------------------------------------------------
def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def onehot(y, k):
    return torch.nn.functional.one_hot(y, k).float()


def toy(n=64, d=10, k=3, seed=0):
    g = gen(seed)
    x = torch.randn(n, d, generator=g)
    x[:, 0] = torch.randint(0, 4, (n,), generator=g).float()  # a discrete column
    return x, torch.randint(0, k, (n,), generator=g)


def test_scarf_keeps_every_value_inside_the_columns_training_values():
    tx, ty = toy(200)
    up = Scarf(0.5).bind(tx, ty)
    x = torch.randn(32, 10) + 100  # far from any training value: every replaced entry is visible
    out = up.batch_transform(x, onehot(torch.zeros(32, dtype=torch.long), 3), gen()).x
    replaced = out != x
    assert (replaced.sum(1) == 5).all()  # exactly round(0.5 * 10) features per row
    for j in range(10):
        observed = set(tx[:, j].tolist())
        assert set(out[replaced[:, j], j].tolist()) <= observed
    with pytest.raises(RuntimeError, match="bind"):
        Scarf(0.5).batch_transform(x, onehot(torch.zeros(32, dtype=torch.long), 3), gen())


def test_tabular_cutmix_label_weight_equals_the_swapped_fraction():
    n, d = 16, 7  # round(0.3 * 7) = 2 features: the swapped fraction 2/7 is not P itself
    x = torch.arange(n)[:, None] * 100.0 + torch.arange(d)[None]  # every entry names its row
    y = torch.eye(n)  # one class per row: the label says which rows were mixed
    out = TabularCutMix(0.3).batch_transform(x, y, gen())
    src = (out.x // 100).long()  # the row each entry came from
    for i in range(n):
        for r in src[i].unique().tolist():
            frac = float((src[i] == r).float().mean())
            assert float(out.y[i, r]) == pytest.approx(frac), (i, r)
    assert torch.allclose(out.y.sum(1), torch.ones(n))
    moved = (src != torch.arange(n)[:, None]).any(1)
    assert torch.allclose(out.y[moved].max(1).values, torch.tensor(5 / 7))


def test_smote_outputs_lie_on_segments_toward_near_same_class_rows():
    tx, ty = toy(120, d=4)
    k = 3
    up = Smote(k).bind(tx, ty)
    out = up.batch_transform(tx[:40], onehot(ty[:40], 3), gen())
    assert torch.equal(out.y, onehot(ty[:40], 3))  # labels unchanged
    assert (out.x != tx[:40]).any(1).all()  # every row moved toward another row, never toward itself
    for i in range(40):
        same = torch.nonzero(ty == ty[i]).flatten()
        dist = (tx[same] - tx[i]).norm(dim=1)
        near = same[dist > 0][dist[dist > 0].argsort()[:k]]  # its k nearest other same-class rows
        delta = out.x[i] - tx[i]
        ok = False
        for t in near.tolist():
            seg = tx[t] - tx[i]
            u = float(delta @ seg / (seg @ seg))
            if -1e-6 <= u <= 1 + 1e-6 and torch.allclose(tx[i] + u * seg, out.x[i], atol=1e-5):
                ok = True
        assert ok, i


def test_gaussian_noise_has_the_named_scale():
    x = torch.zeros(4000, 8)
    out = GaussianNoise(0.25).batch_transform(x, onehot(torch.zeros(4000, dtype=torch.long), 2), gen()).x
    assert float(out.std()) == pytest.approx(0.25, rel=0.02)
    assert abs(float(out.mean())) < 0.01
    assert torch.equal(GaussianNoise(0.0).batch_transform(x, onehot(torch.zeros(4000, dtype=torch.long), 2), gen()).x, x)


def test_feature_mixup_mixes_features_and_labels_with_one_weight():
    x, _ = toy(32)
    out = FeatureMixUp(0.4).batch_transform(x, torch.eye(32), gen())  # one class per row
    own = out.y.diagonal()  # each row's weight of itself = lam (1 for a row paired with itself)
    off = out.y.clone().fill_diagonal_(0)
    perm = torch.where(own < 1, off.argmax(1), torch.arange(32))
    assert torch.allclose(own[own < 1], own[own < 1][0].expand(int((own < 1).sum())))  # one lam per batch
    assert torch.allclose(out.x, own[:, None] * x + (1 - own[:, None]) * x[perm], atol=1e-5)


@pytest.mark.parametrize("policy", ["gauss-s0.1", "scarf-p0.3", "fmixup-a0.2", "tcutmix-p0.3", "smote-k5"])
def test_policies_are_seeded_and_round_trip(policy):
    tx, ty = toy(100)
    up = baselines.create_method(policy)
    assert str(up) == policy and baselines.create_method(str(up)) == up
    assert up.modalities == frozenset({"tabular"})
    up = up.bind(tx, ty)
    x, y = tx[:32], onehot(ty[:32], 3)
    a, b, c = (up.batch_transform(x, y, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, x)


@pytest.mark.parametrize("bad", ["scarf-p1.5", "tcutmix-p-0.1", "smote-k0", "gauss-s-1", "fmixup-a0", "smote-k"])
def test_bad_policy_strings_are_one_line_errors(bad):
    with pytest.raises(baselines.PolicyError, match=bad.split("-")[0]):
        baselines.create_method(bad)


# ---- modality skip rules ------------------------------------------------------------------------
@pytest.mark.parametrize("method,ok", [("none", True), ("gauss-s0.1", True), ("noisy(0.3,gauss-s0.1)", True),
                                       ("smote-k5+saflex", True), ("rand-m9-n2", False), ("mixup-a0.2", False),
                                       ("cutmix-a1.0+saflex", False), ("noisy(0.3,rand-m9-n2)", False)])
def test_image_policies_are_skipped_on_tabular_tasks(method, ok):
    reason = supports("tabular/pmlb:pima", method)
    assert (reason is None) == ok, reason
    if not ok:
        assert "does not support tabular data" in reason


@pytest.mark.parametrize("method", ["scarf-p0.3", "tcutmix-p0.3+saflex", "noisy(0.3,smote-k5)"])
def test_tabular_policies_are_skipped_on_image_tasks(method):
    reason = supports("digits/sklearn", method)
    assert reason is not None and "does not support image data" in reason


# ---- learners on a tabular task -----------------------------------------------------------------
@pytest.mark.parametrize("method", ["scarf-p0.3+saflex", "smote-k5+ref"])
def test_saflex_and_ref_run_on_a_tabular_task(pmlb_root, results, method):
    rec = cli_run(results, "tabular/pmlb:vowel", method, pmlb_root, "ref_frac=0.5", epochs=2)
    assert rec["data"]["reference"] == pytest.approx(0.5 * 198, abs=6)  # half of the 20% validation split
    assert rec["data"]["val"] + rec["data"]["reference"] == 198
    assert 0 <= rec["metrics"]["test_acc"] <= 1


def test_noisy_forwards_bind_to_a_data_bound_policy():
    tx, ty = toy(100)
    up = baselines.create_method("noisy(0.3,scarf-p0.3)").bind(tx, ty)
    up.batch_transform(tx[:8], onehot(ty[:8], 3), gen())
