"""Every registered learner, on the tiny task of every modality it accepts (with that modality's
random upstream): one step trains, a checkpoint round trip resumes the very next step, and the arm
sees the same batches as the plain arm `X` with the same seed."""
import pytest

from bench.learners import get_learner_class
from bench.learners.base import Learner

from contract_helpers import tiny_tasks  # noqa: F401  (the fixture)
from contract_helpers import UPSTREAM, shipped_learners, batches_digest, checkpoint_round_trip, one_step_changes_the_model, tiny_spec, trainer

MODALITIES = sorted(UPSTREAM)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("learner", shipped_learners())
def test_one_step(learner, modality, tiny_tasks, tmp_path):
    one_step_changes_the_model(trainer(tiny_spec(tiny_tasks, modality, UPSTREAM[modality], learner), tmp_path))


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("learner", shipped_learners())
def test_checkpoint_round_trip(learner, modality, tiny_tasks, tmp_path):
    checkpoint_round_trip(tiny_spec(tiny_tasks, modality, UPSTREAM[modality], learner), tmp_path)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("learner", [n for n in shipped_learners() if n != "none"])
def test_same_batches_as_the_plain_arm(learner, modality, tiny_tasks, tmp_path):
    spec = tiny_spec(tiny_tasks, modality, UPSTREAM[modality], learner)
    if get_learner_class(learner).train_split is not Learner.train_split:
        pytest.skip(f"{learner} trains on more than the training split by design (its control arm)")
    plain = tiny_spec(tiny_tasks, modality, UPSTREAM[modality])
    assert batches_digest(trainer(spec, tmp_path / "arm")) == batches_digest(trainer(plain, tmp_path / "x"))


@pytest.mark.parametrize("learner", shipped_learners())
def test_declares_a_semantics_version(learner):
    cls = get_learner_class(learner)
    assert isinstance(cls.semantics, int) and cls.semantics >= 1
    assert cls.semantics_for(cls.default_knobs() if cls.Knobs is not None else None) in range(1, cls.semantics + 1)
