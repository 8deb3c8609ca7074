"""The PMLB power study's datasets, by a rule declared before any of its runs existed
(docs/tabular_power.md), applied to the shared copy's INDEX.tsv:

  1. 500 <= rows <= 10000: a 20 % selection split that can be halved into selection + reference, and a
     run that stays cheap on one CPU thread;
  2. every class has >= 20 rows: with val_frac 0.2 and ref_frac 0.5 each class then has >= 2 rows in the
     selection part and >= 2 in the reference part (and 4 in test);
  3. one set per group of copies (PMLB ships some data sets more than once, re-encoded): sets with the
     same (rows, n_classes, min_class_count, max_class_count) are copies (crx/buggyCrx/australian,
     pima/diabetes, the four mfeat_* views of the same 2000 digits, ...), plus KNOWN_COPIES (the UCI
     Mushroom data as agaricus_lepiota and mushroom, 21 rows apart); the alphabetically first name stays.

    python scripts/tabular_power_sets.py --index DATA/tabular/pmlb/INDEX.tsv             # print the list
    python scripts/tabular_power_sets.py --index DATA/tabular/pmlb/INDEX.tsv --write studies/tabular_power/sweeps/tabular_power.yaml
    python scripts/tabular_power_sets.py --index DATA/tabular/pmlb/INDEX.tsv --check studies/tabular_power/sweeps/tabular_power.yaml
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

MIN_ROWS, MAX_ROWS, MIN_CLASS = 500, 10000, 20
KNOWN_COPIES = {"mushroom": "agaricus_lepiota"}
UPSTREAMS = ("scarf-p0.3", "fmixup-a0.2")   # feature corruption (hard labels) and feature mixup (soft labels)
TUNING_SEEDS, SEEDS = (0,), (1, 2, 3, 4, 5)
EPOCHS = 10


def read_index(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def eligible(rows: list[dict]) -> list[str]:
    """Apply rules 1-3; sorted names."""
    keep = [r for r in rows if MIN_ROWS <= int(r["rows"]) <= MAX_ROWS and int(r["min_class_count"]) >= MIN_CLASS]
    names = {r["dataset"] for r in keep}
    first: dict[tuple, str] = {}
    for r in sorted(keep, key=lambda r: r["dataset"]):
        if KNOWN_COPIES.get(r["dataset"]) in names:
            continue
        first.setdefault((r["rows"], r["n_classes"], r["min_class_count"], r["max_class_count"]), r["dataset"])
    return sorted(first.values())


def sweep_yaml(names: list[str]) -> str:
    tasks = "\n".join(f"      - tabular/pmlb:{n}" for n in names)
    methods = ", ".join(f"{u}{a}" for u in UPSTREAMS for a in ("", "+ref", "+saflex"))
    n_runs = len(names) * len(UPSTREAMS) * 3
    return f"""# The PMLB power study (docs/tabular_power.md): does SAFLEX add ~1 point? Written by
# scripts/tabular_power_sets.py from the shared copy's INDEX.tsv; do not edit the task list by hand.
# Datasets: every PMLB set with {MIN_ROWS} <= rows <= {MAX_ROWS}, every class >= {MIN_CLASS} rows, one per group of
# copies -> {len(names)} sets. Arms: X, X+ref (trained on train + the reference part), X+saflex (reference
# set = that part); ref_frac 0.5 of the selection split (val_frac 0.2), every arm on the same labels.
# Seed 0 is the tuning seed (selection rule: reports/selection.py); seeds 1-5 are the reported pairs.
# {len(names)} sets x {len(UPSTREAMS)} upstreams x 3 arms x {len(TUNING_SEEDS) + len(SEEDS)} seeds = {n_runs * (len(TUNING_SEEDS) + len(SEEDS))} runs ({n_runs * len(SEEDS)} reported), MLP 2x128, {EPOCHS} epochs.
#   saflex-bench sweep studies/tabular_power/sweeps/tabular_power.yaml --executor local --threads 1 --data-root DIR --results R
#   saflex-bench study tabular_power --build-table R; saflex-bench study tabular_power
name: tabular_power
description: {len(names)} PMLB sets (rule in docs/tabular_power.md) x {{{', '.join(UPSTREAMS)}}} x {{X, X+ref, X+saflex}} x seeds 0 (tuning) + 1-5, ref_frac 0.5
fixed:
  epochs: {EPOCHS}
  ref_frac: 0.5
grid:
  task:
{tasks}
  method: [{methods}]
  seed: [{', '.join(map(str, TUNING_SEEDS + SEEDS))}]
launcher:
  cpus_per_task: 1
  mem_gb: 2
  timeout_min: 20
  array_parallelism: 2
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, help="the shared copy's tabular/pmlb/INDEX.tsv")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="YAML", help="write the sweep file")
    g.add_argument("--check", metavar="YAML", help="exit 1 if the sweep file's list differs from the rule's")
    a = p.parse_args(argv)
    if not Path(a.index).is_file():
        print(f"tabular_power_sets: error: no index file {a.index} (valid: DATA/tabular/pmlb/INDEX.tsv)", file=sys.stderr)
        return 2
    names = eligible(read_index(a.index))
    text = sweep_yaml(names)
    if a.write:
        Path(a.write).write_text(text)
        print(f"wrote {a.write}: {len(names)} sets")
    elif a.check:
        same = Path(a.check).read_text() == text
        print(f"{a.check}: {'matches' if same else 'DIFFERS from'} the rule ({len(names)} sets)")
        return 0 if same else 1
    else:
        print("\n".join(names))
        print(f"{len(names)} sets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
