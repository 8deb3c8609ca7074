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
