"""Every shipped sweep that compares a learner with its upstream runs the fair protocol: a reference
part is carved (`ref_frac`) and, for every upstream that runs with a learner using it, the control that
gets the same labels (`X+ref`) runs too, on the same seeds and task options."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeps.config import load_sweep
from sweeps.plan import plan_sweep

from conftest import unfair_groups  # shared with the tabular power study's test

REPO = Path(__file__).resolve().parents[3]
FLAGSHIP = ("demo", "medmnist", "natural", "fewshot", "ood", "tabular", "clip", "clip_cpu", "diffusion", "diffusion_cpu")
MACHINE_PATH = re.compile(r"(/work|/root|/home|/tmp)/")




@pytest.mark.parametrize("name", FLAGSHIP)
def test_flagship_sweep_is_fair(name):
    plan = plan_sweep(load_sweep(name))
    assert plan.runs
    assert unfair_groups(plan.runs) == []


def test_the_fairness_check_catches_a_missing_control():
    runs = [r for r in plan_sweep(load_sweep("demo")).runs if r.spec.method != "cutmix-a1.0+ref"]
    assert any("cutmix-a1.0" in p for p in unfair_groups(runs))


@pytest.mark.parametrize("name", FLAGSHIP)
def test_no_machine_path_in_flagship_sweeps(name):
    assert not MACHINE_PATH.search((REPO / "sweeps" / f"{name}.yaml").read_text())


def test_no_machine_path_in_docs_or_sweep_comments():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "sweeps").glob("*.yaml")),
             REPO / "sweeps" / "README.md"]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if MACHINE_PATH.search(line)]
    assert hits == []


SWEEP_FILES = sorted([*(REPO / "sweeps").glob("*.yaml"), *(REPO / "studies").glob("*/sweeps/*.yaml")])


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_sweep_is_fair_or_named_as_the_old_protocol(path):
    """A comparison sweep without the carve or the X+ref control says so in its first line; and no sweep
    file (comments included) names a path of the machine it was written on."""
    text = path.read_text()
    if unfair_groups(plan_sweep(load_sweep(str(path))).runs):
        assert text.startswith("# OLD PROTOCOL"), f"{path.name}: unfair and not named as the old protocol"
    else:
        assert "OLD PROTOCOL" not in text
    assert not MACHINE_PATH.search(text)
