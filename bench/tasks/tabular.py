"""Tabular classification: any PMLB dataset (`tabular/pmlb:<name>`) and UCI Adult (`tabular/adult`).

Stored form = the float32 model-input matrix [N, D] (so `prepare` is the identity): numeric columns
imputed (median) and standardised, categorical ones imputed (most frequent) and one-hot encoded with
handle_unknown='ignore', all fitted with scikit-learn on the training split only. Models: an MLP and
a tabular ResNet (Gorishniy et al. 2021), both `features` + linear `head`, so SAFLEX applies as is.

Data roots (`--data-root` / $SAFLEX_DATA): either the shared-data root, with `tabular/pmlb/<name>/`
and `tabular/uci_adult/` below it (one root serves both families: the recommended form), or the folder
itself: the one holding the PMLB `<name>/` dirs (the `pmlb` package's local-cache layout
`<name>/<name>.tsv.gz` + optional `metadata.yaml`), or the one holding `adult.data.gz`/`adult.test.gz`.

Splits are part of the task, not of the run: seeded by the option `split_seed` (default 0), so every
run seed and every method sees the same rows; the run seed varies init, order and augmentations.
"""
from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import Any, ClassVar, Optional

from bench.errors import UsageError
from bench.tasks import register_task
from bench.tasks.base import Split, Task, TaskData

PMLB_SUBDIR = Path("tabular") / "pmlb"
ADULT_SUBDIR = Path("tabular") / "uci_adult"
TARGET = "target"  # PMLB's label column
MIN_CLASS_ROWS = 3  # a class needs one row in each of train/val/test to be stratified
MODELS = ("mlp", "tabresnet")
PMLB_EXAMPLES = ("tabular/pmlb:breast_cancer_wisconsin", "tabular/pmlb:credit_g", "tabular/pmlb:vowel")
CATEGORICAL_TYPES = {"categorical", "nominal"}  # metadata.yaml types one-hot encoded; others are numeric


# ---- options -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def options_schema(pmlb: bool):
    """The task options (`--set task.<name>=value`, all recorded in the run spec), as a pydantic model.
    Built on first use so that listing tasks does not import pydantic."""
    from pydantic import Field

    from bench.config import Knobs

    class TabularOptions(Knobs):
        val_frac: float = Field(0.2, gt=0, lt=1, description="fraction of each class held out for selection")
        split_seed: int = Field(0, description="seed of the train/val(/test) split and of max_train_rows")
        max_train_rows: Optional[int] = Field(None, ge=2, description="stratified subsample of the training split")
        depth: int = Field(2, ge=1, le=16, description="MLP hidden layers / ResNet blocks")
        width: int = Field(128, ge=1, le=4096, description="hidden width (ResNet: main width; blocks use 2x)")
        dropout: float = Field(0.1, ge=0, lt=1)

    if not pmlb:
        return TabularOptions

    class PmlbOptions(TabularOptions):
        test_frac: float = Field(0.2, gt=0, lt=1, description="fraction of each class held out for test")
        cat_max_levels: int = Field(10, ge=3, description="no metadata: integer columns with 3..N distinct values are categorical")

    return PmlbOptions


# ---- splitting -------------------------------------------------------------------------------------
def stratified_split(y, fracs: tuple[float, ...], seed: int) -> tuple[list, list[str]]:
    """Indices [rest, part_1, ..., part_k]: each class contributes round(frac * n_c) rows (at least one)
    to each part, the remainder stays in `rest`. Classes with fewer than len(fracs) + 1 rows cannot
    appear in every part: all their rows stay in `rest` (the documented fallback) and are reported."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parts: list[list] = [[] for _ in range(len(fracs) + 1)]
    too_small = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = len(idx)
        if n < len(fracs) + 1:
            parts[0].append(idx)
            too_small.append(int(c))
            continue
        sizes = [max(1, int(round(f * n))) for f in fracs]
        while sum(sizes) > n - 1:  # keep at least one row in `rest`
            sizes[int(np.argmax(sizes))] -= 1
        start = 0
        for k, size in enumerate(sizes, 1):
            parts[k].append(idx[start:start + size])
            start += size
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts], too_small


def stratified_subsample(idx, y, n: int, seed: int):
    """`n` of the rows `idx` (labels y[idx]), each class in proportion, at least one row per class."""
    import numpy as np

    if n >= len(idx):
        return idx
    kept, _ = stratified_split(y[idx], (n / len(idx),), seed)
    return np.sort(idx[kept[1]])


# ---- preprocessing ---------------------------------------------------------------------------------
def fit_preprocessor(frame, categorical: list[str]):
    """ColumnTransformer fitted on the training rows: numeric -> median-impute + standardise,
    categorical -> most-frequent-impute + one-hot (unknown categories at test time -> all zeros)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in frame.columns if c not in set(categorical)]
    # the whole column missing in train: drop it (SimpleImputer would drop it silently anyway)
    numeric = [c for c in numeric if frame[c].notna().any()]
    categorical = [c for c in categorical if frame[c].notna().any()]
    transformers = []
    if numeric:
        transformers.append(("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
    if categorical:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype="float32")
        transformers.append(("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), onehot), categorical))
    if not transformers:
        raise UsageError("no usable feature columns (every column is empty in the training split)")
    pre = ColumnTransformer(transformers, sparse_threshold=0.0)
    return pre.fit(frame)


def encode_splits(frame, y, parts: dict[str, Any], categorical: list[str]) -> tuple[dict[str, Split], int]:
    """Fit the preprocessor on parts['train'] only, transform every part -> float32 Splits."""
    import numpy as np
    import torch

    cat = [str(c) for c in categorical]
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    for c in cat:  # one-hot needs one type per column; codes and strings both become strings
        frame[c] = frame[c].map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    pre = fit_preprocessor(frame.iloc[parts["train"]], cat)
    out = {}
    for name, idx in parts.items():
        x = np.asarray(pre.transform(frame.iloc[idx]), dtype=np.float32)
        out[name] = Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y[idx].astype(np.int64)))
    return out, out["train"].x.shape[1]


# ---- metrics ---------------------------------------------------------------------------------------
def tabular_metrics(prob, y, num_classes: int) -> dict[str, float]:
    """acc, balanced acc, macro-F1 and AUC. AUC is one-vs-rest averaged over the classes present in y
    (binary: the usual AUC, which equals that average); nan when y holds fewer than two classes."""
    import warnings

    import numpy as np
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    pred = prob.argmax(1)
    present = np.unique(y)
    with warnings.catch_warnings():  # y_pred may hold classes absent from y (rare classes, small splits)
        warnings.simplefilter("ignore")
        out = {"acc": float(accuracy_score(y, pred)), "bacc": float(balanced_accuracy_score(y, pred)),
               "f1": float(f1_score(y, pred, average="macro", zero_division=0))}
    if len(present) < 2:
        out["auc"] = float("nan")
    elif num_classes == 2:
        out["auc"] = float(roc_auc_score(y, prob[:, 1]))
    else:
        out["auc"] = float(np.mean([roc_auc_score(y == c, prob[:, c]) for c in present]))
    return out


# ---- models ----------------------------------------------------------------------------------------
def build_tabular_model(name: str, d_in: int, num_classes: int, depth: int, width: int, dropout: float):
    """`mlp`: depth x [Linear-ReLU-Dropout], features = the last hidden layer. `tabresnet`: Linear in,
    depth residual blocks x + Linear(Dropout(ReLU(Linear(BN(x))))) (hidden 2 x width), then BN-ReLU
    (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data"). Both: linear head."""
    from torch import nn

    from bench.models import Classifier

    if name == "mlp":
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(dropout)]
            d = width
        return Classifier(nn.Sequential(*layers), width, num_classes)
    if name == "tabresnet":
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.f = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, 2 * width), nn.ReLU(),
                                       nn.Dropout(dropout), nn.Linear(2 * width, width))

            def forward(self, x):
                return x + self.f(x)

        body = nn.Sequential(nn.Linear(d_in, width), *[Block() for _ in range(depth)], nn.BatchNorm1d(width), nn.ReLU())
        return Classifier(body, width, num_classes)
    raise UsageError(f"unknown tabular model '{name}' (valid: {', '.join(MODELS)})")


# ---- the task base ---------------------------------------------------------------------------------
class TabularTask(Task):
    modality: ClassVar[str] = "tabular"
    metric_names = ("acc", "auc", "bacc", "f1")

    def _folder(self, data_root: Path | None) -> Path:
        raise NotImplementedError

    def check_data(self, data_root: Path | None) -> str | None:
        try:
            self._folder(data_root)
        except UsageError as e:
            return str(e)
        return None

    def __init__(self, pmlb: bool = False):
        self.Options = options_schema(pmlb)  # read by bench.spec.task_options
        self.n_features = 0

    def defaults(self) -> dict[str, Any]:
        # small and CPU friendly; AUC selects (a continuous score: fewer ties than accuracy on small
        # validation splits, and it ignores the decision threshold on imbalanced sets)
        return dict(model="mlp", epochs=20, batch_size=128, lr=1e-3, optimizer="adam", weight_decay=1e-5,
                    schedule="cosine", select_metric="auc")

    def models(self):
        return MODELS

    def prepare(self, x):
        return x.float()

    def options(self, spec: Any):
        return self.Options(**dict(getattr(spec, "options", None) or {}))

    def build_model(self, spec: Any):
        if not self.n_features:
            raise RuntimeError(f"{self.name}: load() must run before build_model() (it fixes the input width)")
        o = self.options(spec)
        return build_tabular_model(spec.model, self.n_features, self.num_classes, o.depth, o.width, o.dropout)

    def metrics(self, logits, y) -> dict[str, float]:
        return tabular_metrics(self.scores(logits.float()).numpy(), y.numpy(), self.num_classes)

    def _finish(self, frame, y, parts: dict[str, Any], categorical: list[str], o: Any,
                info: dict) -> TaskData:
        import numpy as np

        if o.max_train_rows is not None:
            parts["train"] = stratified_subsample(parts["train"], y, o.max_train_rows, o.split_seed)
        self.num_classes = int(y.max()) + 1
        self.task_type = "binary-class" if self.num_classes == 2 else "multi-class"
        splits, self.n_features = encode_splits(frame, y, parts, categorical)
        info = {**info, "n_features": self.n_features, "categorical": list(map(str, categorical)),
                "train_class_counts": np.bincount(y[parts["train"]], minlength=self.num_classes).tolist()}
        return TaskData(splits["train"], splits["val"], {"test": splits["test"]}, info=info)


# ---- PMLB ------------------------------------------------------------------------------------------
def pmlb_dir(data_root: Path | None) -> Path | None:
    """The folder holding the PMLB `<name>/` dirs: <root>/tabular/pmlb if present, else <root>."""
    if data_root is None:
        return None
    root = Path(data_root)
    return root / PMLB_SUBDIR if (root / PMLB_SUBDIR).is_dir() else root


def pmlb_names(data_root: Path | None) -> list[str]:
    folder = pmlb_dir(data_root)
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.tsv.gz").is_file())


def _list_pmlb() -> list[str]:
    env = os.environ.get("SAFLEX_DATA")
    names = pmlb_names(Path(env).expanduser()) if env else []
    return [f"tabular/pmlb:{n}" for n in names] or list(PMLB_EXAMPLES)


def categorical_columns(frame, metadata: dict | None, max_levels: int) -> list[str]:
    """From metadata.yaml (`features: [{name, type}]`, types categorical/nominal one-hot encoded; binary,
    ordinal, continuous, discrete numeric). Columns it does not describe, or no metadata: integer-valued
    columns with 3..max_levels distinct values are categorical (two-level columns stay numeric: the same
    information either way)."""
    import numpy as np

    types = {}
    for feat in (metadata or {}).get("features") or []:
        if isinstance(feat, dict) and "name" in feat:
            types[str(feat["name"])] = str(feat.get("type", "")).strip().lower()
    out = []
    for col in frame.columns:
        t = types.get(str(col))
        if t is not None:
            if t in CATEGORICAL_TYPES:
                out.append(col)
            continue
        values = frame[col].dropna().to_numpy()
        if values.dtype.kind in "OUS":
            out.append(col)
        elif values.dtype.kind in "iub" or (values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0)):
            if 3 <= len(np.unique(values)) <= max_levels:
                out.append(col)
    return out


class PmlbTask(TabularTask):
    def __init__(self, name: str):
        super().__init__(pmlb=True)
        self.dataset = name
        self.name = f"tabular/pmlb:{name}"
        self.description = f"PMLB {name}: seeded stratified train/val/test (task options val_frac, test_frac)"

    def _folder(self, data_root: Path | None) -> Path:
        if data_root is None:
            raise UsageError(f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA) holding "
                             f"{PMLB_SUBDIR}/<name>/<name>.tsv.gz or <name>/<name>.tsv.gz")
        folder = pmlb_dir(data_root)
        if not (folder / self.dataset / f"{self.dataset}.tsv.gz").is_file():
            known = pmlb_names(data_root)
            close = difflib.get_close_matches(self.dataset, known, n=5, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else f"{len(known)} datasets there"
            raise UsageError(f"no PMLB dataset '{self.dataset}' under {folder} "
                             f"(expected {self.dataset}/{self.dataset}.tsv.gz; {hint})")
        return folder / self.dataset

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        from bench.tasks._checks import check_target, read_table, read_yaml, repair_stray_strings

        folder = self._folder(data_root)
        o = self.options(spec)
        path = folder / f"{self.dataset}.tsv.gz"
        frame = read_table(path, sep="\t", compression="gzip")
        if TARGET not in frame.columns:
            raise UsageError(f"{path}: no '{TARGET}' column (PMLB layout: features then '{TARGET}')")
        classes, y = check_target(path, frame.pop(TARGET))
        if len(classes) < 2:
            raise UsageError(f"{self.name}: only one class in '{TARGET}'")
        repair_stray_strings(frame, path)
        meta_path = folder / "metadata.yaml"
        metadata = read_yaml(meta_path) if meta_path.is_file() else None
        categorical = categorical_columns(frame, metadata if isinstance(metadata, dict) else None, o.cat_max_levels)
        (train, val, test), too_small = stratified_split(y, (o.val_frac, o.test_frac), o.split_seed)
        info = {"dataset": self.dataset, "classes": classes.tolist(), "split_seed": o.split_seed,
                "metadata": meta_path.is_file()}
        if too_small:
            info["train_only_classes"] = too_small  # fewer than MIN_CLASS_ROWS rows: all kept in train
        return self._finish(frame, y, {"train": train, "val": val, "test": test}, categorical, o, info)


register_task("tabular/pmlb:<name>", PmlbTask, pattern=r"tabular/pmlb:(?P<name>[\w.+-]+)",
              examples=PMLB_EXAMPLES, lister=_list_pmlb)


# ---- UCI Adult -------------------------------------------------------------------------------------
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income")
ADULT_CATEGORICAL = ("workclass", "education", "marital-status", "occupation", "relationship", "race", "sex",
                     "native-country")
ADULT_FILES = ("adult.data.gz", "adult.test.gz")


@functools.lru_cache(maxsize=4)
def read_adult(folder: str):
    """The two official UCI files -> (frame, y, n_train): rows of adult.data, then adult.test (whose
    first line is "|1x3 Cross validator" and whose labels end with '.'); '?' = missing; >50K = 1."""
    import numpy as np
    import pandas as pd

    from bench.tasks._checks import read_table

    frames = []
    for file, skip in zip(ADULT_FILES, (0, 1)):
        f = read_table(Path(folder) / file, header=None, names=list(ADULT_COLUMNS), skiprows=skip,
                       skipinitialspace=True, na_values="?", compression="gzip")
        if f["income"].isna().sum() > 1:  # more than the trailing blank line: rows with fewer fields
            raise UsageError(f"{Path(folder) / file}: {int(f['income'].isna().sum())} rows lack the income label "
                             f"(expected {len(ADULT_COLUMNS)} comma-separated fields a row); copy the file again")
        for col in ADULT_COLUMNS:
            if col not in ADULT_CATEGORICAL and col != "income" and f[col].dtype.kind == "O":
                raise UsageError(f"{Path(folder) / file}: column '{col}' should be numeric but holds text "
                                 f"(e.g. {f[col][pd.to_numeric(f[col], errors='coerce').isna() & f[col].notna()].iloc[0]!r})")
        frames.append(f.dropna(subset=["income"]))  # the trailing blank line
    n_train = len(frames[0])
    frame = pd.concat(frames, ignore_index=True)
    label = frame.pop("income").str.strip().str.rstrip(".")
    bad = sorted(set(label) - {"<=50K", ">50K"})
    if bad:
        raise UsageError(f"{folder}: unexpected income labels {bad[:3]}")
    return frame, (label == ">50K").to_numpy().astype(np.int64), n_train


@register_task("tabular/adult")
class AdultTask(TabularTask):
    name = "tabular/adult"
    description = ("UCI Adult (income >50K): official 32561 train / 16281 test rows; validation held out "
                   "from train (seeded, stratified; task option val_frac)")

    def _folder(self, data_root: Path | None) -> Path:
        if data_root is None:
            raise UsageError(f"task {self.name} needs a data root (--data-root DIR or $SAFLEX_DATA) holding "
                             f"{ADULT_SUBDIR}/adult.data.gz or adult.data.gz")
        root = Path(data_root)
        for folder in (root / ADULT_SUBDIR, root / "uci_adult", root):
            if all((folder / f).is_file() for f in ADULT_FILES):
                return folder
        raise UsageError(f"missing UCI Adult files {', '.join(ADULT_FILES)} under {root} "
                         f"(looked in {ADULT_SUBDIR}/, uci_adult/ and the root itself)")

    def load(self, data_root: Path | None, spec: Any = None) -> TaskData:
        import numpy as np

        o = self.options(spec)
        frame, y, n_train = read_adult(os.fspath(self._folder(data_root)))
        official_train = np.arange(n_train)
        (train, val), _ = stratified_split(y[official_train], (o.val_frac,), o.split_seed)
        parts = {"train": official_train[train], "val": official_train[val], "test": np.arange(n_train, len(y))}
        info = {"dataset": "uci_adult", "classes": ["<=50K", ">50K"], "split_seed": o.split_seed}
        return self._finish(frame, y, parts, list(ADULT_CATEGORICAL), o, info)
