import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# real datasets for offline tests: ../shared/data beside the checkout (or $SAFLEX_SHARED_DATA)
SHARED_DATA = Path(os.environ.get("SAFLEX_SHARED_DATA", REPO.parent / "shared" / "data"))
MEDMNIST_DIR = SHARED_DATA / "medmnist"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def medmnist_root():
    if not (MEDMNIST_DIR / "breastmnist.npz").is_file():
        pytest.skip(f"official MedMNIST npz files not found under {MEDMNIST_DIR}")
    return MEDMNIST_DIR


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


def unfair_groups(runs) -> list[str]:
    """Planned runs of a sweep: groups (everything but the learner) where a reference-using learner ran without ref_frac or
    without an X+ref run next to it."""
    by_group: dict = {}
    for r in runs:
        s = r.spec
        ident = (s.task, s.upstream, s.seed, s.epochs, s.model, repr(sorted((s.options or {}).items())))
        by_group.setdefault(ident, set()).add(s.learner)
        if s.learner not in ("none", "zeroshot") and s.ref_frac is None:
            return [f"{s.method} on {s.task}: no ref_frac"]
    return [f"{g[1]} on {g[0]} seed {g[2]}: {sorted(ls)} without ref"
            for g, ls in by_group.items() if ls - {"none", "zeroshot", "ref"} and "ref" not in ls]
