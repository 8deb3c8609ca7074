"""Launcher settings are one strict pydantic dataclass: a sweep file's values and code's
`dataclasses.replace` are validated alike, and a bad value is one line naming the setting."""
import dataclasses

import pytest
from pydantic import ValidationError

from bench.errors import UsageError
from sweeps.config import Launcher, launcher_settings


@pytest.mark.parametrize("raw,expected", [
    ({"mem_gb": True}, "launcher.mem_gb: expected a number > 0 (GB), got True"),
    ({"cpus_per_task": 2.5}, "launcher.cpus_per_task: expected an integer >= 1, got 2.5"),
    ({"partition": " "}, "launcher.partition: expected a partition name (string), got ' '"),
    ({"deterministic": "yes"}, "launcher.deterministic: expected true or false, got 'yes'"),
    ({"slurm_additional_parameters": {"x": [1]}}, "launcher.slurm_additional_parameters: expected a mapping"),
    ({"gpus": 1}, "launcher.gpus: unknown launcher setting (valid: partition, gpus_per_node, cpus_per_task"),
])
def test_a_bad_setting_is_one_line(raw, expected):
    with pytest.raises(UsageError) as e:
        launcher_settings(raw, "s.yaml", "launcher")
    assert str(e.value).startswith(f"s.yaml: {expected}") and "\n" not in str(e.value)


def test_values_are_coerced_once_and_only_those_given_come_back():
    got = launcher_settings({"setup": "module load cuda", "mem_gb": 2, "partition": " gpu "}, "s.yaml", "launcher")
    assert got == {"setup": ("module load cuda",), "mem_gb": 2.0, "partition": "gpu"}
    assert Launcher(**got).to_dict()["setup"] == ["module load cuda"]


def test_replace_validates_too():
    base = Launcher()
    assert dataclasses.replace(base, runs_per_job=4).runs_per_job == 4
    with pytest.raises(ValidationError):
        dataclasses.replace(base, runs_per_job=0)
