"""Every registered upstream method (list_methods), on the tiny task of every modality it claims:
one step trains, a checkpoint round trip resumes the very next step, the same seed gives the same
batches to X and X+saflex (the pairing every comparison relies on) and another seed does not, and
its policy string prints back to itself."""
import pytest

import baselines
from baselines import create_method, list_methods

from contract_helpers import tiny_tasks  # noqa: F401  (the fixture)
from contract_helpers import batches_digest, checkpoint_round_trip, one_step_changes_the_model, tiny_spec, trainer


def claimed(method):
    return sorted(create_method(method).modalities & baselines.MODALITIES)


CASES = [(m, mod) for m in list_methods() for mod in claimed(m)]


def test_every_method_claims_a_modality():
    assert all(claimed(m) for m in list_methods()), [m for m in list_methods() if not claimed(m)]


@pytest.mark.parametrize("method", list_methods())
def test_policy_string_round_trips(method):
    up = create_method(method)
    assert create_method(str(up)) == up and isinstance(up.semantics_versions(), dict)


@pytest.mark.parametrize("method,modality", CASES)
def test_one_step(method, modality, tiny_tasks, tmp_path):
    one_step_changes_the_model(trainer(tiny_spec(tiny_tasks, modality, method), tmp_path))


@pytest.mark.parametrize("method,modality", CASES)
def test_checkpoint_round_trip(method, modality, tiny_tasks, tmp_path):
    checkpoint_round_trip(tiny_spec(tiny_tasks, modality, method), tmp_path)


@pytest.mark.parametrize("method,modality", CASES)
def test_pairing(method, modality, tiny_tasks, tmp_path):
    x = batches_digest(trainer(tiny_spec(tiny_tasks, modality, method), tmp_path / "x"))
    paired = batches_digest(trainer(tiny_spec(tiny_tasks, modality, method, "saflex"), tmp_path / "s"))
    other_seed = batches_digest(trainer(tiny_spec(tiny_tasks, modality, method, seed=1), tmp_path / "o"))
    assert x == paired and x != other_seed
