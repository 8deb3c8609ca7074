"""Bad inputs and faults, one row each (issue 28): run flags, data files, sweep files, results roots,
signals, full disks. Every row asserts the same contract:

- a non-zero exit;
- exactly one line on stderr, naming the problem (a regex), no traceback;
- within a time bound (in-process rows: measured; signal rows: a subprocess timeout);
- nothing in the results root that a later command could take for progress (no spec.json,
  attempt.json, metrics, checkpoint, wandb segment, cache folder: no file at all).

Data rows corrupt real copies of ../shared/data files in tmp_path (skipped without them). Rows run
the CLI in this process (bench.cli.main) where they can; signals need a subprocess. The store, lock
and tracking rows are STORE_STATE_CASES at the end: some of them check documented non-error behaviour
(status / report / compare of a record that is not done), so they carry their own contract.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from bench.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SAFLEX_SHARED_DATA", REPO.parent / "shared" / "data"))
PMLB = "breast_cancer_wisconsin"
PMLB_FILE = SHARED / "tabular" / "pmlb" / PMLB / f"{PMLB}.tsv.gz"
ADULT_DIR = SHARED / "tabular" / "uci_adult"
BREAST = SHARED / "medmnist" / "breastmnist.npz"
RETINA = SHARED / "medmnist" / "retinamnist.npz"
IN_PROCESS_LIMIT_S = 60  # a row that takes longer counts as a hang
DIGITS = ["--task", "digits/sklearn", "--method", "none"]


@dataclass
class Env:
    tmp: Path
    results: Path
    data: Path
    holders: list = None  # processes a row started (lock holders), ended after it

    def sweep(self, text: str | bytes, name: str = "s.yaml") -> str:
        path = self.tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text))
        return str(path)


def run_args(env: Env, *extra: str) -> list[str]:
    return ["run", *DIGITS, "--epochs", "1", "--results", str(env.results), "--wandb", "disabled", "--quiet", *extra]


def sets(*assignments: str, method: str = "none", task: str = "digits/sklearn") -> Callable[[Env], list[str]]:
    def argv(env: Env) -> list[str]:
        out = ["run", "--task", task, "--method", method, "--results", str(env.results), "--wandb", "disabled", "--quiet"]
        for a in assignments:
            out += ["--set", a]
        return out

    return argv


# ---- run flags and run fields --------------------------------------------------------------------
RUN_CASES = {
    # non-finite and out-of-range numbers (lr=nan used to crash in Adam, lr=inf in scikit-learn)
    "lr-nan": (sets("lr=nan"), r"'lr' must be a finite number"),
    "lr-inf": (sets("lr=inf"), r"'lr' must be a finite number"),
    "lr-minus-inf": (sets("lr=-inf"), r"'lr' must be a finite number"),
    "lr-zero": (sets("lr=0"), r"'lr' must be > 0"),
    "lr-negative": (sets("lr=-0.1"), r"'lr' must be > 0"),
    "lr-text": (sets("lr=fast"), r"'lr' expects float"),
    "lr-flag-nan": (lambda e: run_args(e, "--lr", "nan"), r"'lr' must be a finite number"),
    "lr-flag-text": (lambda e: run_args(e, "--lr", "x"), r"argument --lr: invalid float value"),
    "weight-decay-negative": (sets("weight_decay=-1"), r"'weight_decay' must be >= 0"),
    "weight-decay-nan": (sets("weight_decay=nan"), r"'weight_decay' must be a finite number"),
    "momentum-above-1": (sets("momentum=1.5"), r"'momentum' must be in \[0, 1\)"),
    "momentum-negative": (sets("momentum=-0.1"), r"'momentum' must be in \[0, 1\)"),
    "gamma-zero": (sets("gamma=0"), r"'gamma' must be > 0"),
    "gamma-inf": (sets("gamma=inf"), r"'gamma' must be a finite number"),
    "milestones-above-1": (sets("milestones=0.5,1.5"), r"'milestones' are fractions"),
    "milestones-nan": (sets("milestones=0.5,nan"), r"'milestones' must be a finite number"),
    "milestones-text": (sets("milestones=half"), r"'milestones' expects"),
    "ref-frac-one": (sets("ref_frac=1"), r"'ref_frac' must be in \(0, 1\)"),
    "ref-frac-nan": (sets("ref_frac=nan"), r"'ref_frac' must be a finite number"),
    "ref-from-test": (sets("ref_frac=0.5", "ref_from=test"), r"unknown ref_from 'test'"),
    # integers: no silent truncation, no bools
    "epochs-fraction": (sets("epochs=1.5"), r"'epochs' expects int"),
    "epochs-zero": (sets("epochs=0"), r"'epochs' must be >= 1"),
    "epochs-negative": (sets("epochs=-3"), r"'epochs' must be >= 1"),
    "epochs-text": (sets("epochs=many"), r"'epochs' expects int"),
    "epochs-bool": (sets("epochs=true"), r"'epochs' expects int"),
    "epochs-flag-fraction": (lambda e: run_args(e, "--epochs", "1.5"), r"argument --epochs: invalid int value"),
    "batch-size-zero": (sets("batch_size=0"), r"'batch_size' must be >= 1"),
    "batch-size-fraction": (sets("batch_size=1.5"), r"'batch_size' expects int"),
    "batch-size-exponent": (sets("batch_size=1e3"), r"'batch_size' expects int"),
    "seed-bool": (sets("seed=true"), r"'seed' expects int"),
    "seed-fraction": (sets("seed=0.5"), r"'seed' expects int"),
    "seed-flag-text": (lambda e: run_args(e, "--seed", "x"), r"argument --seed: invalid int value"),
    "as-rgb-word": (sets("as_rgb=maybe"), r"'as_rgb' expects bool"),
    # names
    "optimizer-unknown": (sets("optimizer=rmsprop"), r"unknown optimizer 'rmsprop' \(valid: adam"),
    "schedule-unknown": (sets("schedule=step"), r"unknown schedule 'step' \(valid:"),
    "select-metric-unknown": (sets("select_metric=f1"), r"unknown select_metric 'f1'"),
    "model-unknown": (sets("model=resnet9000"), r"unknown model 'resnet9000'"),
    "field-unknown": (sets("learning_rate=0.1"), r"unknown run field 'learning_rate'"),
    "set-malformed": (sets("lr"), r"malformed --set 'lr'"),
    "set-no-name": (sets("=3"), r"malformed --set '=3'"),
    "task-option-unknown": (sets("task.val_frac=0.1"), r"task digits/sklearn has no options"),
    "knob-nan": (sets("saflex.eps=nan", method="none+saflex"), r"saflex knobs?.*eps"),
    "knob-unknown": (sets("saflex.epz=1", method="none+saflex"), r"epz"),
    "task-unknown": (lambda e: ["run", "--task", "digits/nope", "--method", "none", "--results", str(e.results)], r"digits/nope"),
    "task-missing": (lambda e: ["run", "--method", "none", "--results", str(e.results)], r"required: --task"),
    "method-unknown": (lambda e: ["run", "--task", "digits/sklearn", "--method", "magic", "--results", str(e.results)], r"magic"),
    "learner-unknown": (lambda e: ["run", "--task", "digits/sklearn", "--method", "none+magic", "--results", str(e.results)],
                        r"magic"),
    "diffusion-cache-missing": (lambda e: run_args(e)[:4] + ["diffusion(p0.5,abcdef0123)"] + run_args(e)[5:],
                                r"diffusion cache abcdef0123 not found"),
    "method-empty": (lambda e: ["run", "--task", "digits/sklearn", "--method", "", "--results", str(e.results)], r"method|upstream"),
    # execution settings
    "device-unknown": (lambda e: run_args(e, "--device", "tpu"), r"unknown device 'tpu'"),
    "device-gpu-index": (lambda e: run_args(e, "--device", "cuda:99"), r"cuda:99"),
    "workers-negative": (lambda e: run_args(e, "--workers", "-1"), r"--workers must be >= 0"),
    "threads-zero": (lambda e: run_args(e, "--threads", "0"), r"expected an integer >= 1, got '0'"),
    "threads-text": (lambda e: run_args(e, "--threads", "all"), r"expected an integer >= 1, got 'all'"),
    "threads-above-cores": (lambda e: run_args(e, "--threads", "1000"), r"--threads 1000 is more than the \d+ CPU"),
    "keep-checkpoints-unknown": (lambda e: run_args(e, "--keep-checkpoints", "all"), r"invalid choice: 'all'"),
    "aug-path-unknown": (lambda e: run_args(e, "--aug-path", "gpu"), r"invalid choice: 'gpu'"),
    "wandb-mode-unknown": (lambda e: run_args(e, "--wandb", "cloud"), r"invalid choice: 'cloud'"),
    "results-empty": (lambda e: ["run", *DIGITS, "--results", ""], r"--results is empty"),
    "data-root-empty": (lambda e: run_args(e, "--data-root", ""), r"--data-root is empty"),
    "unknown-flag": (lambda e: run_args(e, "--epohcs", "2"), r"unrecognized arguments: --epohcs"),
    "unknown-command": (lambda e: ["train"], r"invalid choice: 'train'"),
    "list-unknown": (lambda e: ["list", "datasets"], r"invalid choice: 'datasets'"),
}


# ---- data files: corrupted copies of the shared files -----------------------------------------------
def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def _pmlb_text() -> str:
    return gzip.decompress(PMLB_FILE.read_bytes()).decode()


def _pmlb_edit(edit: Callable[[list[list[str]]], None]) -> Callable[[Path], None]:
    """Rewrite the table cell by cell: rows[0] is the header."""
    def write(path: Path) -> None:
        rows = [line.split("\t") for line in _pmlb_text().splitlines()]
        edit(rows)
        path.write_bytes(_gz("\n".join("\t".join(r) for r in rows) + "\n"))

    return write


def _col(rows, name: str) -> int:
    return rows[0].index(name)


def _set_cell(row: int, col: str, value: str):
    def edit(rows):
        rows[row][_col(rows, col)] = value

    return edit


def _all_targets(value: str):
    def edit(rows):
        t = _col(rows, "target")
        for r in rows[1:]:
            r[t] = value

    return edit


PMLB_CASES = {  # name -> (how the file is written, expected message)
    "empty-file": (lambda p: p.write_bytes(b""), r"is empty"),
    "truncated-gzip": (lambda p: p.write_bytes(PMLB_FILE.read_bytes()[: PMLB_FILE.stat().st_size // 2]),
                       r"corrupt data file .*EOFError"),
    "gzip-header-only": (lambda p: p.write_bytes(PMLB_FILE.read_bytes()[:20]), r"corrupt data file"),
    "not-gzip": (lambda p: p.write_bytes(_pmlb_text().encode()), r"corrupt data file .*(BadGzipFile|gzip)"),
    "random-bytes": (lambda p: p.write_bytes(bytes(range(256)) * 8), r"corrupt data file"),
    "binary-inside-gzip": (lambda p: p.write_bytes(gzip.compress(bytes(range(128, 256)) * 50)), r"corrupt data file"),
    "header-only": (lambda p: p.write_bytes(_gz(_pmlb_text().splitlines()[0] + "\n")), r"has a header but no rows"),
    "nan-target": (_pmlb_edit(_set_cell(5, "target", "")), r"1 row\(s\) have no label in 'target'"),
    "nan-target-word": (_pmlb_edit(_set_cell(7, "target", "nan")), r"have no label in 'target'"),
    "text-target": (_pmlb_edit(_set_cell(3, "target", "benign")), r"label column 'target' holds non-numeric values"),
    "no-target-column": (_pmlb_edit(lambda rows: rows[0].__setitem__(_col(rows, "target"), "label")), r"no 'target' column"),
    "one-class": (_pmlb_edit(_all_targets("1")), r"only one class in 'target'"),
    "ragged-row": (_pmlb_edit(lambda rows: rows[10].extend(["1", "2"])), r"corrupt data file .*ParserError"),
    "broken-metadata": (lambda p: (shutil.copy(PMLB_FILE, p), (p.parent / "metadata.yaml").write_text("features: [\n")),
                        r"corrupt data file .*metadata.yaml"),
    "binary-metadata": (lambda p: (shutil.copy(PMLB_FILE, p), (p.parent / "metadata.yaml").write_bytes(b"\xff\xfe\x00")),
                        r"corrupt data file .*metadata.yaml"),
    "file-is-directory": (lambda p: p.mkdir(), r"no PMLB dataset"),
}


def _adult_copy(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("adult.data.gz", "adult.test.gz"):
        shutil.copy(ADULT_DIR / f, folder / f)


def _adult_rewrite(name: str, edit: Callable[[list[str]], None]):
    def write(folder: Path) -> None:
        _adult_copy(folder)
        lines = gzip.decompress((ADULT_DIR / name).read_bytes()).decode().splitlines()
        edit(lines)
        (folder / name).write_bytes(_gz("\n".join(lines) + "\n"))

    return write


def _adult_bytes(name: str, data: Callable[[bytes], bytes]):
    def write(folder: Path) -> None:
        _adult_copy(folder)
        (folder / name).write_bytes(data((ADULT_DIR / name).read_bytes()))

    return write


def _cut_fields(lines):
    for i in range(10, 20):
        lines[i] = ",".join(lines[i].split(",")[:5])


def _set_field(line_no: int, field: int, value: str):
    def edit(lines):
        parts = lines[line_no].split(",")
        parts[field] = value
        lines[line_no] = ",".join(parts)

    return edit


ADULT_CASES = {
    "data-truncated": (_adult_bytes("adult.data.gz", lambda b: b[: len(b) // 2]), r"corrupt data file .*adult.data.gz"),
    "test-truncated": (_adult_bytes("adult.test.gz", lambda b: b[: len(b) // 3]), r"corrupt data file .*adult.test.gz"),
    "data-empty": (_adult_bytes("adult.data.gz", lambda b: b""), r"adult.data.gz is empty"),
    "data-not-gzip": (_adult_bytes("adult.data.gz", lambda b: gzip.decompress(b)), r"corrupt data file .*adult.data.gz"),
    "data-random-bytes": (_adult_bytes("adult.data.gz", lambda b: bytes(range(256)) * 4), r"corrupt data file"),
    "rows-missing-fields": (_adult_rewrite("adult.data.gz", _cut_fields), r"rows lack the income label"),
    "text-in-age": (_adult_rewrite("adult.data.gz", _set_field(3, 0, "forty")), r"column 'age' should be numeric"),
    "unknown-income-label": (_adult_rewrite("adult.data.gz", _set_field(3, 14, " maybe")), r"unexpected income labels"),
    "test-file-missing": (lambda f: (_adult_copy(f), (f / "adult.test.gz").unlink()), r"missing UCI Adult files"),
}


def _npz_edit(src: Path, edit: Callable[[dict], None]):
    def write(path: Path) -> None:
        import numpy as np

        with np.load(src) as d:
            arrays = {k: d[k] for k in d.files}
        edit(arrays)
        np.savez(path, **arrays)

    return write


def _put(key: str, value: Callable):
    return lambda a: a.__setitem__(key, value(a))


def _label(split: str, value: int):
    def edit(a):
        a[f"{split}_labels"] = a[f"{split}_labels"].astype("int64")
        a[f"{split}_labels"][3, 0] = value

    return edit


MEDMNIST_CASES = {  # breastmnist unless the name says retina
    "100-labels-for-546-images": (_npz_edit(BREAST, _put("train_labels", lambda a: a["train_labels"][:100])),
                                  r"train_labels has shape \(100, 1\), expected \(546, 1\)"),
    "2d-images": (_npz_edit(BREAST, _put("train_images", lambda a: a["train_images"].reshape(546, -1))),
                  r"train_images is uint8 \(546, 784\), expected uint8 \(N, 28, 28\)"),
    "label-7-in-2-classes": (_npz_edit(BREAST, _label("train", 7)), r"train_labels hold \[7\], outside 0..1"),
    "label-negative": (_npz_edit(BREAST, _label("train", -1)), r"train_labels hold \[-1\], outside 0..1"),
    "test-label-2": (_npz_edit(BREAST, _label("test", 2)), r"test_labels hold \[2\]"),
    "val-2d-images": (_npz_edit(BREAST, _put("val_images", lambda a: a["val_images"].reshape(78, -1))), r"val_images is"),
    "float-images": (_npz_edit(BREAST, _put("train_images", lambda a: a["train_images"].astype("float32"))),
                     r"train_images is float32"),
    "32px-images": (_npz_edit(BREAST, _put("train_images", lambda a: __import__("numpy").zeros((546, 32, 32), "uint8"))),
                    r"expected uint8 \(N, 28, 28\)"),
    "rgb-images-in-grey-set": (_npz_edit(BREAST, _put("train_images", lambda a: a["train_images"][..., None].repeat(3, -1))),
                               r"train_images is uint8 \(546, 28, 28, 3\)"),
    "labels-1d": (_npz_edit(BREAST, _put("train_labels", lambda a: a["train_labels"][:, 0])), r"train_labels has shape \(546,\)"),
    "float-labels": (_npz_edit(BREAST, _put("train_labels", lambda a: a["train_labels"].astype("float32") + 0.5)),
                     r"train_labels are float32"),
    "545-images": (_npz_edit(BREAST, lambda a: (a.__setitem__("train_images", a["train_images"][:545]),
                                                a.__setitem__("train_labels", a["train_labels"][:545]))),
                   r"545 images, official size is 546"),
    "missing-key": (_npz_edit(BREAST, lambda a: a.pop("val_labels")), r"corrupt data file .*val_labels"),
    "truncated-npz": (lambda p: p.write_bytes(BREAST.read_bytes()[: BREAST.stat().st_size // 2]), r"corrupt data file"),
    "empty-npz": (lambda p: p.write_bytes(b""), r"corrupt data file"),
    "text-npz": (lambda p: p.write_text("not a zip\n"), r"corrupt data file"),
    "retina-label-5-in-5-classes": (_npz_edit(RETINA, _label("train", 5)), r"train_labels hold \[5\], outside 0..4"),
    "retina-grey-images": (_npz_edit(RETINA, _put("train_images", lambda a: a["train_images"][..., 0])),
                           r"expected uint8 \(N, 28, 28, 3\)"),
}


# ---- sweep files -----------------------------------------------------------------------------------
OK_SWEEP = """
name: t
fixed: {task: digits/sklearn, method: none, epochs: 1}
grid: {seed: [0]}
"""
SWEEP_CASES = {  # name -> (file text, expected message)
    "binary-file": (bytes(range(256)) * 4, r"not a text file \(byte \d+ is not UTF-8\)"),
    "gzip-file": (gzip.compress(b"name: t\n"), r"not a text file"),
    "empty-file": ("", r"top level: expected a mapping"),
    "top-level-list": ("- a\n- b\n", r"top level: expected a mapping"),
    "yaml-syntax": ("name: t\ngrid: {seed: [0\n", r"invalid YAML"),
    "tab-indent": ("name: t\ngrid:\n\tseed: [0]\n", r"invalid YAML"),
    "duplicate-top-key": ("name: t\ngrid: {seed: [0]}\nfixed: {task: digits/sklearn, method: none}\nname: u\n",
                          r"line 4: duplicate key 'name' \(first given on line 1\)"),
    "duplicate-grid-key": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid:\n  seed: [0]\n  seed: [1]\n",
                           r"line 5: duplicate key 'seed'"),
    "duplicate-fixed-key": ("name: t\nfixed:\n  task: digits/sklearn\n  method: none\n  method: none+saflex\ngrid: {seed: [0]}\n",
                            r"duplicate key 'method'"),
    "seed-bool": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {seed: [true]}\n", r"'seed' expects int"),
    "epochs-fraction": ("name: t\nfixed: {task: digits/sklearn, method: none, epochs: 1.5}\ngrid: {seed: [0]}\n",
                        r"'epochs' expects int"),
    "epochs-bool": ("name: t\nfixed: {task: digits/sklearn, method: none, epochs: yes}\ngrid: {seed: [0]}\n",
                    r"'epochs' expects int"),
    "lr-nan": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {lr: [.nan]}\n", r"'lr' must be a finite number"),
    "lr-inf": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {lr: [.inf]}\n", r"'lr' must be a finite number"),
    "huge-grid": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid:\n  seed: [" + ", ".join(map(str, range(1000)))
                  + "]\n  lr: [" + ", ".join(f"0.{i + 1}" for i in range(9)) + ", 1.0, 2.0, 3.0]\n",
                  r"the grid has 12,000 points .* --allow-large-grid"),
    "unknown-top-key": ("name: t\ngird: {seed: [0]}\n", r"unknown key 'gird'"),
    "bad-name": ("name: 'a b'\ngrid: {seed: [0]}\n", r"name: expected a sweep name"),
    "no-grid": ("name: t\nfixed: {task: digits/sklearn, method: none}\n", r"grid: expected a mapping"),
    "grid-not-mapping": ("name: t\ngrid: 3\n", r"grid: expected a mapping"),
    "grid-empty-list": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {seed: []}\n", r"non-empty list"),
    "grid-nested": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {seed: [{a: 1}]}\n", r"list of scalar values"),
    "grid-null": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {seed: [null]}\n", r"list of scalar values"),
    "no-task-axis": ("name: t\nfixed: {method: none}\ngrid: {seed: [0]}\n", r"expected a 'task' axis"),
    "field-unknown": ("name: t\nfixed: {task: digits/sklearn, method: none}\ngrid: {sead: [0]}\n", r"unknown run field 'sead'"),
    "knob-unknown": ("name: t\nfixed: {task: digits/sklearn, method: none+saflex}\ngrid: {saflex.epz: [1]}\n",
                     r"unknown saflex knob 'epz'"),
    "fixed-and-grid": ("name: t\nfixed: {task: digits/sklearn, method: none, seed: 0}\ngrid: {seed: [0]}\n",
                       r"'seed' is also in fixed"),
    "method-unknown": ("name: t\nfixed: {task: digits/sklearn}\ngrid: {method: [magic]}\n", r"magic"),
    "task-unknown": ("name: t\nfixed: {method: none}\ngrid: {task: [digits/nope]}\n", r"digits/nope"),
    "skip-not-list": (OK_SWEEP + "skip: {when: {seed: 0}}\n", r"skip: expected a list"),
    "skip-no-reason": (OK_SWEEP + "skip:\n  - when: {seed: 0}\n", r"skip\[0\].reason: expected a non-empty string"),
    "launcher-unknown": (OK_SWEEP + "launcher: {gpus: 1}\n", r"launcher.gpus: unknown launcher setting"),
    "launcher-mem-text": (OK_SWEEP + "launcher: {mem_gb: lots}\n", r"launcher.mem_gb: expected a number > 0"),
    "launcher-cpus-zero": (OK_SWEEP + "launcher: {cpus_per_task: 0}\n", r"launcher.cpus_per_task: expected an integer >= 1"),
    "launcher-bool-int": (OK_SWEEP + "launcher: {timeout_min: true}\n", r"launcher.timeout_min: expected an integer"),
    "cache-ref-without-generate": ("name: t\nfixed: {task: digits/sklearn}\ngrid: {method: ['diffusion:@x']}\n",
                                   r"no generate section"),
}


def _sweep_argv(env: Env, path: str, *extra: str) -> list[str]:
    return ["sweep", path, "--executor", "local", "--results", str(env.results), "--wandb", "disabled", *extra]


SWEEP_FLAG_CASES = {
    "file-missing": (lambda e: _sweep_argv(e, str(e.tmp / "nope.yaml")), r"sweep file '.*nope.yaml' not found"),
    "file-is-directory": (lambda e: _sweep_argv(e, str(e.tmp)), r"not found|cannot read"),
    "results-empty": (lambda e: ["sweep", e.sweep(OK_SWEEP), "--results", ""], r"--results is empty"),
    "threads-above-cores": (lambda e: _sweep_argv(e, e.sweep(OK_SWEEP), "--threads", "1000"), r"--threads 1000 is more than"),
    "threads-zero": (lambda e: _sweep_argv(e, e.sweep(OK_SWEEP), "--threads", "0"), r"--threads must be >= 1"),
    "runs-per-job-zero": (lambda e: _sweep_argv(e, e.sweep(OK_SWEEP), "--runs-per-job", "0"), r"--runs-per-job: expected"),
    "executor-unknown": (lambda e: _sweep_argv(e, e.sweep(OK_SWEEP), "--executor", "cloud"), r"invalid choice: 'cloud'"),
    "status-binary-file": (lambda e: ["status", e.sweep(bytes(range(256))), "--results", str(e.results)], r"not a text file"),
    "status-duplicate-key": (lambda e: ["status", e.sweep("name: t\nname: u\n"), "--results", str(e.results)],
                             r"duplicate key 'name'"),
    "dry-run-huge-grid": (lambda e: [*_sweep_argv(e, e.sweep(SWEEP_CASES["huge-grid"][0])), "--dry-run"], r"12,000 points"),
}


# ---- results roots ----------------------------------------------------------------------------------
def _results_is_file(env: Env) -> list[str]:
    env.results.write_text("x")
    return run_args(env)


def _results_under_file(env: Env) -> list[str]:
    (env.tmp / "f").write_text("x")
    env.results = env.tmp / "f" / "r"
    return run_args(env)


ROOT_CASES = {
    "results-is-a-file": (_results_is_file, r"is a file, not a directory"),
    "results-under-a-file": (_results_under_file, r"is a file, not a directory"),
}

def _generate_missing_model(env: Env) -> list[str]:
    env.results = env.tmp / "cache"  # checked for leftovers like a results root: no cache folder
    return ["generate", "--task", "digits/sklearn", "--model", str(env.tmp / "no-model"), "--limit", "8",
            "--cache", str(env.results), "--device", "cpu"]


def _generate_bad_strength(env: Env) -> list[str]:
    env.results = env.tmp / "cache"
    return ["generate", "--task", "digits/sklearn", "--model", str(env.tmp), "--strength", "nan", "--cache", str(env.results)]


ROOT_CASES.update({
    "generate-missing-model": (_generate_missing_model, r"no Stable Diffusion pipeline folder"),
    "generate-nan-strength": (_generate_bad_strength, r"strength"),
})

# Store rows in the plain (argv builder, expected regex) form; the store / lock / tracking rows of
# issue 28 need a done store and checks beyond one line: STORE_STATE_CASES at the end of this file.
STORE_CASES: dict[str, tuple[Callable[[Env], list[str]], str]] = {}


# ---- the contract -----------------------------------------------------------------------------------
def files_left(root: Path) -> list[str]:
    if not root.exists() or root.is_file():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def check_one_line(code, err: str, expected: str, warnings_before: bool = False) -> None:
    """warnings_before: a run that trained a little may have warned before it failed (BatchNorm)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not (warnings_before and "saflex-bench: warning:" in ln)]
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]
    assert "error:" in lines[0], lines[0]


def call(capsys, argv: list[str]) -> tuple[int, str, float]:
    t0 = time.process_time()
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    spent = time.process_time() - t0
    return code, capsys.readouterr().err, spent


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("SAFLEX_RESULTS", raising=False)
    monkeypatch.delenv("SAFLEX_DATA", raising=False)
    monkeypatch.setenv("SAFLEX_CACHE", str(tmp_path / "cache-root"))
    monkeypatch.chdir(tmp_path)  # a default ./results would land here, and be caught below
    return Env(tmp_path, tmp_path / "results", tmp_path / "data")


def _assert_case(capsys, env: Env, argv: list[str], expected: str) -> None:
    code, err, spent = call(capsys, argv)
    check_one_line(code, err, expected)
    assert spent < IN_PROCESS_LIMIT_S
    assert files_left(env.results) == [] and files_left(env.tmp / "results") == []


@pytest.mark.parametrize("name", sorted(RUN_CASES))
def test_run_flag(name, env, capsys):
    build, expected = RUN_CASES[name]
    _assert_case(capsys, env, build(env), expected)


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            pytest.skip(f"shared data file {p} not found")


@pytest.mark.parametrize("name", sorted(PMLB_CASES))
def test_pmlb_file(name, env, capsys):
    _need(PMLB_FILE)
    write, expected = PMLB_CASES[name]
    folder = env.data / "tabular" / "pmlb" / PMLB
    folder.mkdir(parents=True)
    write(folder / f"{PMLB}.tsv.gz")
    argv = ["run", "--task", f"tabular/pmlb:{PMLB}", "--method", "none", "--data-root", str(env.data),
            "--results", str(env.results), "--wandb", "disabled", "--epochs", "1", "--quiet"]
    _assert_case(capsys, env, argv, expected)


@pytest.mark.parametrize("name", sorted(ADULT_CASES))
def test_adult_file(name, env, capsys):
    _need(ADULT_DIR / "adult.data.gz", ADULT_DIR / "adult.test.gz")
    write, expected = ADULT_CASES[name]
    write(env.data / "tabular" / "uci_adult")
    argv = ["run", "--task", "tabular/adult", "--method", "none", "--data-root", str(env.data),
            "--results", str(env.results), "--wandb", "disabled", "--epochs", "1", "--quiet"]
    _assert_case(capsys, env, argv, expected)


@pytest.mark.parametrize("name", sorted(MEDMNIST_CASES))
def test_medmnist_file(name, env, capsys):
    flag = "retinamnist" if name.startswith("retina") else "breastmnist"
    _need(RETINA if flag == "retinamnist" else BREAST)
    write, expected = MEDMNIST_CASES[name]
    (env.data / "medmnist").mkdir(parents=True)
    write(env.data / "medmnist" / f"{flag}.npz")
    argv = ["run", "--task", f"medmnist/{flag}", "--method", "none", "--data-root", str(env.data),
            "--results", str(env.results), "--wandb", "disabled", "--epochs", "1", "--quiet", "--device", "cpu"]
    _assert_case(capsys, env, argv, expected)


@pytest.mark.parametrize("name", sorted(SWEEP_CASES))
def test_sweep_file(name, env, capsys):
    text, expected = SWEEP_CASES[name]
    _assert_case(capsys, env, _sweep_argv(env, env.sweep(text)), expected)


@pytest.mark.parametrize("name", sorted(SWEEP_FLAG_CASES))
def test_sweep_flag(name, env, capsys):
    build, expected = SWEEP_FLAG_CASES[name]
    _assert_case(capsys, env, build(env), expected)


@pytest.mark.parametrize("name", sorted({**ROOT_CASES, **STORE_CASES}))
def test_results_root(name, env, capsys):
    build, expected = {**ROOT_CASES, **STORE_CASES}[name]
    argv = build(env)
    code, err, _ = call(capsys, argv)
    check_one_line(code, err, expected)
    if name.startswith("generate"):
        assert files_left(env.results) == []


def test_string_in_a_float_column_is_read_as_missing_with_one_warning(env, capsys):
    """Below the threshold a stray string does not turn a float column categorical (3 features became
    122); above it the column is text and stays categorical."""
    _need(PMLB_FILE)
    from bench.tasks import get_task
    from bench.tasks._checks import STRAY_FRACTION

    folder = env.data / "tabular" / "pmlb" / PMLB
    folder.mkdir(parents=True)
    path = folder / f"{PMLB}.tsv.gz"
    shutil.copy(PMLB_FILE, path)
    clean = get_task(f"tabular/pmlb:{PMLB}").load(env.data, None)
    _pmlb_edit(_set_cell(4, "2", "n/a?"))(path)
    capsys.readouterr()
    data = get_task(f"tabular/pmlb:{PMLB}").load(env.data, None)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "column '2' is numeric but for 1 of 569 value(s) ['n/a?']" in err[0], err
    assert data.train.x.shape[1] == clean.train.x.shape[1]  # still one standardised column
    n_text = int(569 * STRAY_FRACTION) + 2  # above the threshold: a text column, one-hot encoded

    def many(rows):
        for r in range(1, n_text + 1):
            rows[r][_col(rows, "2")] = f"w{r}"

    _pmlb_edit(many)(path)
    data = get_task(f"tabular/pmlb:{PMLB}").load(env.data, None)
    assert capsys.readouterr().err == ""
    assert data.train.x.shape[1] > clean.train.x.shape[1] + 10


def test_infinite_feature_is_read_as_missing(env, capsys):
    _need(PMLB_FILE)
    import torch

    from bench.tasks import get_task

    folder = env.data / "tabular" / "pmlb" / PMLB
    folder.mkdir(parents=True)
    _pmlb_edit(_set_cell(4, "3", "inf"))(folder / f"{PMLB}.tsv.gz")
    data = get_task(f"tabular/pmlb:{PMLB}").load(env.data, None)
    assert "column '3' holds 1 infinite value(s)" in capsys.readouterr().err
    assert all(torch.isfinite(s.x).all() for s in (data.train, data.select, data.tests["test"]))


def test_every_case_is_documented():
    """docs/troubleshooting.md (linked from the README) has a row for every case of the tables."""
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    tables = [RUN_CASES, PMLB_CASES, ADULT_CASES, MEDMNIST_CASES, SWEEP_CASES, SWEEP_FLAG_CASES, ROOT_CASES]
    missing = [name for t in tables for name in t if f"`{name}`" not in doc]
    missing += [name for name in [*SIGNAL_CASES, *DISK_CASES, *STORE_STATE_CASES] if f"`{name}`" not in doc]
    assert missing == [], missing
    assert "docs/troubleshooting.md" in (REPO / "README.md").read_text()


def test_case_count():
    """The table's size, printed for the issue's note (pytest -s shows it)."""
    tables = [RUN_CASES, PMLB_CASES, ADULT_CASES, MEDMNIST_CASES, SWEEP_CASES, SWEEP_FLAG_CASES, ROOT_CASES, STORE_CASES,
              STORE_STATE_CASES]
    n = sum(len(t) for t in tables) + len(SIGNAL_CASES) + len(DISK_CASES)
    print(f"bad-input cases: {n}")
    assert n >= 150


# ---- full disks (simulated in-process: ENOSPC from the n-th atomic write) -------------------------------
DISK_CASES = {"spec": 1, "attempt": 2, "first-checkpoint": 3, "first-metrics": 4, "second-checkpoint": 5}


@pytest.mark.parametrize("name", sorted(DISK_CASES))
def test_full_disk_is_one_line_and_the_rerun_continues(name, tmp_path, capsys, monkeypatch):
    import errno

    import bench.results.store
    from bench.runner import run_spec
    from bench.spec import make_spec

    real = bench.results.store.write_bytes_atomic
    calls = []

    def full_after(path, data, keep_previous=None, durable=True):
        calls.append(Path(path).name)
        if len(calls) >= DISK_CASES[name]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, keep_previous, durable)

    monkeypatch.setattr(bench.results.store, "write_bytes_atomic", full_after)
    results = tmp_path / "r"
    argv = ["run", *DIGITS, "--epochs", "2", "--results", str(results), "--wandb", "disabled", "--quiet", "--threads", "1"]
    code, err, _ = call(capsys, argv)
    check_one_line(code, err, r"no space left on the device .*re-run the same command to continue", warnings_before=True)
    assert not list(results.rglob("result.json"))
    monkeypatch.setattr(bench.results.store, "write_bytes_atomic", real)  # space freed
    code, err, _ = call(capsys, argv)
    assert code == 0, err
    straight = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), tmp_path / "straight", progress=False,
                        wandb_mode="disabled", threads=1)
    key = straight["key"]
    from bench.store import ResultsStore

    assert ResultsStore(results).read_result(key)["metrics"] == straight["metrics"]


# ---- signals (subprocesses) ------------------------------------------------------------------------
def _env_vars() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


SIGNAL_CASES = {"run-SIGTERM": ("run", "SIGTERM"), "run-SIGUSR2": ("run", "SIGUSR2"), "run-SIGHUP": ("run", "SIGHUP"),
                "sweep-SIGTERM": ("sweep", "SIGTERM"), "sweep-SIGUSR2": ("sweep", "SIGUSR2")}


def _signal_run(tmp_path: Path, signame: str) -> None:
    from bench.spec import make_spec
    from bench.store import ResultsStore

    results = tmp_path / "r"
    cmd = [sys.executable, "-m", "bench.cli", "run", *DIGITS, "--epochs", "30", "--results", str(results), "--quiet",
           "--wandb", "disabled", "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env_vars(), cwd=REPO)
    for line in p.stdout:
        if line.startswith("epoch 2/30"):
            break
    p.send_signal(getattr(signal, signame))
    out, err = p.communicate(timeout=120)
    sig = getattr(signal, signame)
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning" not in ln]
    assert p.returncode == 128 + sig and "Traceback" not in err, err
    assert len(lines) == 1 and re.search(rf"interrupted \(stopped by {signame}\); \d+/30 epochs of run \w+ are saved: "
                                         r"re-run the same command to resume from epoch \d+", lines[0]), err
    key = make_spec("digits/sklearn", "none", 0, {"epochs": 30}).key
    attempt = ResultsStore(results).read_attempt(key)
    assert attempt["state"] == "interrupted" and signame in attempt["error"]


def _signal_sweep(tmp_path: Path, signame: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: sig\nfixed: {task: digits/sklearn, method: none, epochs: 30}\ngrid: {seed: [0, 1]}\n"
                    "launcher: {array_parallelism: 1, timeout_min: 15}\n")
    results = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(path), "--executor", "local", "--results",
                          str(results), "--wandb", "disabled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env_vars(), cwd=REPO)
    deadline = time.time() + 240
    while not list(results.glob("runs/*/metrics.jsonl")):
        assert p.poll() is None and time.time() < deadline, "no run started"
        time.sleep(0.5)
    p.send_signal(getattr(signal, signame))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + getattr(signal, signame) and "Traceback" not in err, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert re.search(rf"interrupted \(stopped by {signame}\): 0/2 finished, 1 stopped .*1 never started; re-run the "
                     r"same `sweep` command to resume", last), err
    from bench.store import ResultsStore

    store = ResultsStore(results)
    states = [store.read_attempt(d.name) for d in (results / "runs").iterdir()]
    assert [a["state"] for a in states if a] == ["interrupted"]  # the job stopped cleanly, not killed


@pytest.mark.parametrize("name", [n if n == "run-SIGTERM" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(SIGNAL_CASES)])
def test_stop_signal(name, tmp_path):
    """SIGTERM / SIGUSR2 / SIGHUP: one line saying what was saved and how to resume, exit 128 + signal,
    attempt.json `interrupted` (a local sweep first stops its jobs cleanly)."""
    what, signame = SIGNAL_CASES[name]
    if what == "sweep":
        pytest.importorskip("submitit")
    (_signal_run if what == "run" else _signal_sweep)(tmp_path, signame)


def test_checkpoint_of_another_model_is_moved_aside_and_the_run_starts_over(tmp_path, capsys):
    """Another model's readable checkpoint under this run's folder: one warning, moved aside, the run
    starts over and ends like an uninterrupted one (it used to fail with a size mismatch forever)."""
    import torch

    from bench.runner import run_spec
    from bench.spec import make_spec
    from bench.store import ResultsStore

    quiet = dict(progress=False, wandb_mode="disabled", threads=1)
    straight = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), tmp_path / "a", **quiet)
    other = make_spec("digits/sklearn", "none", 0, {"epochs": 2, "as_rgb": True})  # conv1 takes 3 channels
    with pytest.raises(RuntimeError):
        run_spec(other, tmp_path / "b", on_epoch_end=lambda e, r: (_ for _ in ()).throw(RuntimeError("stop")), **quiet)
    src = ResultsStore(tmp_path / "b").run_dir(other.key) / "checkpoint.pt"
    run_dir = ResultsStore(tmp_path / "c").run_dir(straight["key"])
    run_dir.mkdir(parents=True)
    ck = torch.load(src, weights_only=False)
    ck.pop("identity", None)  # as written before checkpoints carried their run key: judged by shapes
    torch.save(ck, run_dir / "checkpoint.pt")
    capsys.readouterr()
    rec = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), tmp_path / "c", **quiet)
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "does not belong to this run" in ln]
    assert len(warn) == 1 and "shape" in warn[0], warn
    assert rec["metrics"] == straight["metrics"] and "foreign_checkpoint" in rec["warnings"]
    assert len(list(run_dir.glob("checkpoint.pt.foreign-*"))) == 1
    # with an identity, another run's checkpoint is foreign by its key even where every shape matches
    seed1 = make_spec("digits/sklearn", "none", 1, {"epochs": 2})
    with pytest.raises(RuntimeError):
        run_spec(seed1, tmp_path / "d", on_epoch_end=lambda e, r: (_ for _ in ()).throw(RuntimeError("stop")), **quiet)
    src = ResultsStore(tmp_path / "d").run_dir(seed1.key) / "checkpoint.pt"
    assert torch.load(src, weights_only=False)["identity"]["key"] == seed1.key
    run_dir = ResultsStore(tmp_path / "e").run_dir(straight["key"])
    run_dir.mkdir(parents=True)
    shutil.copy(src, run_dir / "checkpoint.pt")
    capsys.readouterr()
    rec = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 2}), tmp_path / "e", **quiet)
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "does not belong to this run" in ln]
    assert len(warn) == 1 and f"it is for key '{seed1.key}'" in warn[0], warn
    assert rec["metrics"] == straight["metrics"]


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m none '{where}'"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow  # ~1.5 min: three 4-epoch runs
def test_really_full_disk_one_line_then_rerun_continues(tmp_path):
    """A real ENOSPC: the results root on a 6 MB tmpfs (a private mount namespace; skipped where
    unshare/mount are not allowed). Epoch 3's checkpoint does not fit: one line, exit 1, the two saved
    epochs kept; after the tmpfs grows (space freed) the same command resumes and ends with the metrics
    of an uninterrupted run."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs unshare + CAP_SYS_ADMIN)")
    from bench.runner import run_spec
    from bench.spec import make_spec

    run = (f"'{sys.executable}' -m bench.cli run {' '.join(DIGITS)} --epochs 4 --results '{mnt}/r' --wandb disabled "
           f"--quiet --threads 1")
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=6m none '{mnt}'
        {run} > '{tmp_path}/out1' 2> '{tmp_path}/err1'; echo $? > '{tmp_path}/rc1'
        mount -o remount,size=64m '{mnt}'
        {run} > '{tmp_path}/out2' 2> '{tmp_path}/err2'; echo $? > '{tmp_path}/rc2'
        cp '{mnt}'/r/runs/*/result.json '{tmp_path}/result.json'
    """)
    subprocess.run(["unshare", "-m", "sh", "-c", script], env=_env_vars(), cwd=REPO, timeout=600, check=True)
    err1 = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1"
    check_one_line(1, err1, r"no space left on the device .* nothing saved was lost", warnings_before=True)
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    assert "resumed from checkpoint after epoch 2/4" in (tmp_path / "out2").read_text()
    import json

    straight = run_spec(make_spec("digits/sklearn", "none", 0, {"epochs": 4}), tmp_path / "straight", progress=False,
                        wandb_mode="disabled", threads=1)
    assert json.loads((tmp_path / "result.json").read_text())["metrics"] == straight["metrics"]


def test_stop_signals_respect_an_ignored_signal():
    """Under nohup SIGHUP is ignored: the CLI must not turn it back into a stop."""
    from bench.errors import Interrupted, stop_signals_interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(Interrupted) as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(1)
            assert stop.value.exit_code == 128 + signal.SIGUSR2 and "SIGUSR2" in str(stop.value)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


# ---- a store that disagrees with itself, locks, tracking (issue 28) ---------------------------------
# Rows act on a copy of one small store (two done digits runs, seeds 0 and 1, wandb offline) that a
# row corrupts before calling the CLI. error=True: the one-line contract above (exit != 0, one
# `error:` line naming the problem; `allow` = a regex for notes a waiter prints before it); error=False:
# the documented behaviour of status / sweep / report / compare / run on that store: exit 0, no
# traceback, `expected` found in stdout + stderr (multi-line), and `check` for what is on disk.
STORE_SWEEP = "name: t\nfixed: {task: digits/sklearn, method: none, epochs: 1}\ngrid: {seed: [0, 1]}\n"


@dataclass
class StoreCase:
    build: Callable  # (env, key of seed 0, monkeypatch) -> argv, after corrupting env.results
    expected: str
    error: bool = False
    check: Callable | None = None  # (env, key, stdout) -> None
    allow: str | None = None
    limit_s: float = IN_PROCESS_LIMIT_S


def _key(seed: int = 0) -> str:
    from bench.spec import make_spec

    return make_spec("digits/sklearn", "none", seed, {"epochs": 1}).key


def _rd(env: Env, key: str) -> Path:
    return env.results / "runs" / key


def _record(env: Env, key: str) -> dict:
    import json

    return json.loads((_rd(env, key) / "result.json").read_text())


def _write_record(edit: Callable[[dict], object]):
    def corrupt(env: Env, key: str) -> None:  # edits the record in place
        import json

        rec = _record(env, key)
        edit(rec)
        (_rd(env, key) / "result.json").write_text(json.dumps(rec))

    return corrupt


def _write_text(text: str | Callable[[str], str]):
    def corrupt(env: Env, key: str) -> None:
        path = _rd(env, key) / "result.json"
        path.write_text(text(path.read_text()) if callable(text) else text)

    return corrupt


def _status(corrupt):
    def build(env: Env, key: str, mp) -> list[str]:
        corrupt(env, key)
        return ["status", env.sweep(STORE_SWEEP), "--results", str(env.results)]

    return build


def _dry_sweep(corrupt):
    def build(env: Env, key: str, mp) -> list[str]:
        corrupt(env, key)
        return ["sweep", env.sweep(STORE_SWEEP), "--results", str(env.results), "--executor", "local", "--dry-run"]

    return build


def _report(corrupt):
    def build(env: Env, key: str, mp) -> list[str]:
        corrupt(env, key)
        return ["report", "--results", str(env.results), "--out", str(env.tmp / "rep")]

    return build


def _compare(corrupt):
    def build(env: Env, key: str, mp) -> list[str]:
        clean = env.tmp / "clean"
        shutil.copytree(env.results, clean)
        corrupt(env, key)
        return ["compare", str(clean), str(env.results), "--out", str(env.tmp / "cmp")]

    return build


def _rerun(corrupt, *extra: str):
    def build(env: Env, key: str, mp) -> list[str]:
        corrupt(env, key)
        return ["run", *DIGITS, "--epochs", "1", "--results", str(env.results), "--threads", "1", *extra]

    return build


def _key_line(reason: str) -> str:
    return rf"(?m)^{{key}}\s+failed\s+digits/sklearn.*{reason}"


def _left_out(reason: str):
    def check(env: Env, key: str, out: str) -> None:
        text = (env.tmp / "cmp" / "compare.md").read_text()
        assert re.search(rf"\| {key} \| done in A only; B: {reason}", text), text

    return check


def _reran(env: Env, key: str, out: str) -> None:
    from bench.store import ResultsStore

    assert re.search(r"(?m)^epoch 1/1 ", out), out  # trained again, not served
    assert ResultsStore(env.results).read_result(key) is not None


def _reran_aside(env: Env, key: str, out: str) -> None:
    _reran(env, key, out)
    assert len(list(_rd(env, key).glob("checkpoint.pt.corrupt-*"))) == 1


def _untouched(env: Env, key: str, out: str) -> None:
    assert _record(env, key)["schema_version"] == 99 and not re.search(r"(?m)^epoch ", out)


def _key_only(env: Env, key: str) -> None:
    import json

    (_rd(env, key) / "result.json").write_text(json.dumps({"key": key}))


KEY_ONLY = _key_only
TRUNCATED = _write_text(lambda t: t[: len(t) // 2])
NEWER = _write_record(lambda rec: rec.update(schema_version=99))
OTHER_SEMANTICS = _write_record(lambda rec: rec.update(semantics={"learner:none": 2}))


def _torn_metrics(env: Env, key: str) -> None:
    path = _rd(env, key) / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo\n{"epoch": 3, "loss": 0.4}\n')


def _torn_ledger(env: Env, key: str) -> None:
    folder = env.results / "sweeps" / "t"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submissions.jsonl").write_text(f'{{"key": "{key}", "job_id": "1", "state": "submitted"}}\n{{"key": "{key}", "jo')


def _bad_plan(env: Env, key: str) -> None:
    folder = env.results / "sweeps" / "t"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text("{not json")


def _garbage_checkpoint(env: Env, key: str) -> None:
    (_rd(env, key) / "result.json").unlink()
    (_rd(env, key) / "checkpoint.pt").write_bytes(b"not a checkpoint")


def _holder_script(dead: bool) -> str:
    """A process that holds a run's lock: itself (then SIGSTOPped), or, naming a dead pid, a child of
    a holder that is gone."""
    return textwrap.dedent(f"""
        import fcntl, json, os, socket, subprocess, sys, time
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        pid = os.getpid()
        if {dead}:
            p = subprocess.Popen(["true"]); p.wait(); pid = p.pid
        os.pwrite(fd, json.dumps({{"pid": pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}}).encode(), 0)
        print("held", flush=True)
        time.sleep(120)
    """)


def _locked(dead: bool):
    def build(env: Env, key: str, mp) -> list[str]:
        shutil.rmtree(_rd(env, key))
        _rd(env, key).mkdir(parents=True)
        p = subprocess.Popen([sys.executable, "-c", _holder_script(dead), str(_rd(env, key) / ".job.lock")],
                             stdout=subprocess.PIPE, text=True)
        env.holders.append(p)
        assert p.stdout.readline().strip() == "held"
        if not dead:
            p.send_signal(signal.SIGSTOP)
        mp.setenv("SAFLEX_LOCK_GIVE_UP_S", "1")
        return ["run", *DIGITS, "--epochs", "1", "--results", str(env.results), "--threads", "1", "--quiet",
                "--wandb", "disabled"]

    return build


def _only_the_lock(env: Env, key: str, out: str) -> None:
    assert files_left(_rd(env, key)) == [".job.lock"]  # the waiter wrote nothing


def _online_no_network(env: Env, key: str, mp) -> list[str]:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    return ["run", *DIGITS, "--epochs", "1", "--seed", "5", "--results", str(env.results), "--quiet", "--wandb", "online"]


def _nothing_for_seed5(env: Env, key: str, out: str) -> None:
    assert not (env.results / "runs" / _key(5)).exists()


def _killed_after_result(env: Env, key: str, mp) -> list[str]:
    argv = ["run", *DIGITS, "--epochs", "1", "--seed", "3", "--results", str(env.results), "--wandb", "offline",
            "--threads", "1", "--quiet"]
    out = subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True, timeout=300,
                         env={**_env_vars(), "SAFLEX_FAULT": "after-result"}, cwd=REPO)
    assert out.returncode != 0 and (env.results / "runs" / _key(3) / "result.json").exists(), out.stderr
    return argv


def _repaired(env: Env, key: str, out: str) -> None:
    from bench.tracking import COMPLETE, offline_run_dirs, read_offline_run

    run_dir = env.results / "runs" / _key(3)
    assert (run_dir / "wandb" / COMPLETE).exists()
    assert any(read_offline_run(d, wait_s=10)["steps"] == [1] for d in offline_run_dirs(run_dir))


def _results_file(cmd: str):
    def build(env: Env, key: str, mp) -> list[str]:
        shutil.rmtree(env.results)
        env.results.write_text("x")
        return {"status": ["status", env.sweep(STORE_SWEEP), "--results", str(env.results)],
                "report": ["report", "--results", str(env.results)],
                "compare": ["compare", str(env.results), str(env.tmp)]}[cmd]

    return build


STORE_STATE_CASES = {
    # a result.json holding only {"key": ...}: not done anywhere (it was done for status and sweep,
    # unreadable for report: neither redone nor reported)
    "key-only-record-status": StoreCase(_status(KEY_ONLY), _key_line("result.json holds no metrics: rerun")),
    "key-only-record-sweep": StoreCase(_dry_sweep(KEY_ONLY), r"(?m)^{key}\s+submit .*result.json holds no metrics.*\n"
                                                             r"(.*\n)*planned 2 \| done 1 .*would submit 1"),
    "key-only-record-report": StoreCase(_report(KEY_ONLY), r"not done: {key}: result.json holds no metrics: rerun"),
    "key-only-record-compare": StoreCase(_compare(KEY_ONLY), r"only in A: 1", check=_left_out("result.json holds no metrics")),
    "key-only-record-run": StoreCase(_rerun(KEY_ONLY), r"(?m)^key {key}$", check=_reran),
    # a truncated result.json: the truncation, not the job's last stderr line
    "truncated-record-status": StoreCase(_status(TRUNCATED), _key_line(r"result.json truncated \(the writer was killed")),
    "truncated-record-report": StoreCase(_report(TRUNCATED), r"not done: {key}: result.json truncated"),
    "truncated-record-compare": StoreCase(_compare(TRUNCATED), r"only in A: 1", check=_left_out("result.json truncated")),
    "truncated-record-run": StoreCase(_rerun(TRUNCATED), r"(?m)^key {key}$", check=_reran),
    "empty-record-status": StoreCase(_status(_write_text("")), _key_line("result.json is empty")),
    "not-json-record-status": StoreCase(_status(_write_text("<html>")), _key_line(r"does not parse \(not JSON\)")),
    "list-record-status": StoreCase(_status(_write_text("[1, 2]")), _key_line("result.json holds a list, not a record")),
    "other-runs-record-status": StoreCase(_status(_write_record(lambda r: r.update(key=_key(1)))),
                                          _key_line(r"result.json names run \w+, not {key}")),
    "failed-status-record-status": StoreCase(_status(_write_record(lambda r: r.update(status="failed"))),
                                             _key_line("result.json says status 'failed', not 'done'")),
    "no-test-metric-record-status": StoreCase(
        _status(_write_record(lambda r: r.update(metrics={k: v for k, v in r["metrics"].items() if not k.startswith("test_")}))),
        _key_line(r"holds no test metric")),
    "no-spec-record-report": StoreCase(_report(_write_record(lambda r: r.pop("spec"))), r"not done: {key}: result.json holds no spec"),
    # a record of a schema newer than the code: shown, never overwritten
    "newer-schema-record-status": StoreCase(_status(NEWER), _key_line(r"schema_version 99; this code reads versions 1-2")),
    "newer-schema-record-run": StoreCase(_rerun(NEWER, "--quiet"), r"run {key}: result.json has schema_version 99; .*update "
                                         r"saflex-bench.*left as it is", error=True, check=_untouched),
    # made under other semantics: not served, trained again
    "other-semantics-record-status": StoreCase(_status(OTHER_SEMANTICS), _key_line(r"made under semantics learner:none=2, "
                                                                                   r"today's is v1: rerun")),
    "other-semantics-record-run": StoreCase(_rerun(OTHER_SEMANTICS), r"(?m)^key {key}$", check=_reran),
    # metrics.jsonl with an unreadable line in the middle: the done run stays done and reported
    "torn-metrics-line-report": StoreCase(_report(_torn_metrics), r"loaded 2 done runs"),
    "torn-sweep-ledger-status": StoreCase(_status(_torn_ledger), r"done 2 / running 0 / pending 0 / failed 0"),
    "plan-json-not-json-sweep": StoreCase(_dry_sweep(_bad_plan), r"planned 2 \| done 2 .*would submit 0"),
    "unreadable-checkpoint-run": StoreCase(_rerun(_garbage_checkpoint), r"(?m)^key {key}$", check=_reran_aside),
    # locks: the waiter names the holder and gives up on a stopped or dead one
    "lock-holder-stopped": StoreCase(_locked(dead=False), r"gave up waiting for .*\.job\.lock: its holder, pid \d+ on \S+ since "
                                     r"2026-01-01T00:00:00Z, is stopped \(SIGSTOP", error=True, check=_only_the_lock,
                                     allow=r"is being trained by another process: held by pid \d+ on \S+ since 2026", limit_s=30),
    "lock-holder-dead": StoreCase(_locked(dead=True), r"gave up waiting .*its holder, pid \d+ on \S+ since 2026-01-01T00:00:00Z, "
                                  r"is gone, but a process it started still holds the lock", error=True, check=_only_the_lock,
                                  allow=r"is being trained by another process: held by pid", limit_s=30),
    # tracking
    "wandb-online-no-network": StoreCase(_online_no_network, r"wandb online mode: cannot reach 127.0.0.1:\d+ "
                                         r"\(Connection refused\); use --wandb offline", error=True, check=_nothing_for_seed5,
                                         limit_s=15),
    "killed-after-result-wandb-repaired": StoreCase(_killed_after_result, r"(?m)^key \w+$", check=_repaired),
    # --results naming a file, for the commands that read a store
    "status-results-is-a-file": StoreCase(_results_file("status"), r"is a file, not a directory", error=True),
    "report-results-is-a-file": StoreCase(_results_file("report"), r"no results store at", error=True),
    "compare-results-is-a-file": StoreCase(_results_file("compare"), r"RESULTS_A .*no results store there", error=True),
}


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    from bench.runner import run_spec
    from bench.spec import make_spec

    root = tmp_path_factory.mktemp("store") / "results"
    for seed in (0, 1):
        run_spec(make_spec("digits/sklearn", "none", seed, {"epochs": 1}), root, wandb_mode="offline", progress=False,
                 threads=1)
    return root


@pytest.mark.parametrize("name", sorted(STORE_STATE_CASES))
def test_store_lock_tracking(name, env, capsys, monkeypatch, store_template):
    case = STORE_STATE_CASES[name]
    shutil.copytree(store_template, env.results)
    env.holders = []
    key = _key(0)
    try:
        argv = case.build(env, key, monkeypatch)
        capsys.readouterr()
        import threading

        # a waiter that never gives up must not hang the suite: the holders end after the row's bound
        watchdog = threading.Timer(case.limit_s, lambda: [p.kill() for p in env.holders])
        watchdog.start()
        t0 = time.monotonic()
        try:
            code = cli_main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        spent = time.monotonic() - t0
    finally:
        if "watchdog" in locals():
            watchdog.cancel()
        for p in env.holders:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()
    out, err = capsys.readouterr()
    expected = case.expected.replace("{key}", key)
    assert spent < case.limit_s, spent
    if case.error:
        assert case.allow is None or re.search(case.allow, err), err
        check_one_line(code, "\n".join(ln for ln in err.splitlines() if not (case.allow and re.search(case.allow, ln))),
                       expected)
    else:
        assert code == 0 and "Traceback" not in err, err
        assert re.search(expected, out + err), out + err
    if case.check:
        case.check(env, key, out)
