"""Every registered task (list_tasks): it builds, names a valid default spec whose key reads back,
declares a modality and metrics its selection can use, and either loads without a data root or says
in one line what it needs (entries that need real data stop there: no download, no traceback)."""
import pytest

import baselines
from bench.errors import UsageError
from bench.spec import RunSpec, make_spec
from bench.tasks import get_task

from contract_helpers import shipped_tasks


@pytest.mark.parametrize("name", shipped_tasks())
def test_task_contract(name):
    task = get_task(name)
    assert task.modality in baselines.MODALITIES and task.metric_names
    assert isinstance(task.semantics, int) and task.semantics >= 1
    spec = make_spec(name, "none")
    assert spec.select_metric in (*task.metric_names, "loss", "last")
    assert RunSpec.from_dict(spec.to_dict()).key == spec.key
    if name.startswith("clip/"):
        pytest.skip("CLIP tasks load pretrained weights (cached on a GPU machine only)")
    try:
        data = task.load(None, spec)
    except UsageError as e:
        assert "\n" not in str(e)
        pytest.skip(f"needs real data: {e}")
    assert len(data.train) and len(data.select) and data.tests
