"""`launcher.pack_mode: serial`: the runs of a pack one after another in the job's own interpreter
(imports and wandb's service paid once per job). Same records and metrics as one run per job."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.errors import UsageError
from bench.store import ResultsStore
from sweeps import load_sweep, plan_sweep
from sweeps.launcher import LEDGER, pack_resources, read_ledger, sweep_dir
from sweeps.pack import PACK_LOG, PackFailed, PackJob
from test_sweeps import run_cli, write


def test_serial_pack_trains_every_run_in_one_process_with_the_same_metrics(tmp_path, capsys):
    path = write(tmp_path, """
        name: serial
        fixed: {task: digits/sklearn, epochs: 1, method: none}
        grid: {seed: [0, 1, 2]}
        launcher: {array_parallelism: 1, timeout_min: 15, runs_per_job: 3, pack_mode: serial}
    """)
    plan = plan_sweep(load_sweep(path))
    assert load_sweep(path).launcher.pack_mode == "serial"
    packed = tmp_path / "packed"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "local", "--results", packed, "--wandb", "offline")
    assert code == 0 and "done 3 / failed 0" in out, out
    ledger = read_ledger(sweep_dir(packed, "serial") / LEDGER)
    (job_id,) = {ledger[k]["job_id"] for k in plan.keys}
    folder = Path(ledger[plan.keys[0]]["folder"].replace("%j", job_id))
    rows = [json.loads(ln) for ln in (folder / PACK_LOG).read_text().splitlines()]
    assert [r["key"] for r in rows] == plan.keys and {r["state"] for r in rows} == {"done"}
    assert len({r["pid"] for r in rows}) == 1  # one interpreter for the whole pack
    assert all(a["ended"] <= b["started"] for a, b in zip(rows, rows[1:]))  # one after another
    store = ResultsStore(packed)
    single = tmp_path / "single"
    code, out, _ = run_cli(capsys, "sweep", path, "--executor", "debug", "--results", single, "--runs-per-job", "1",
                           "--wandb", "disabled")
    assert code == 0, out
    from bench.tracking import COMPLETE

    for key in plan.keys:
        assert store.read_result(key)["metrics"] == ResultsStore(single).read_result(key)["metrics"], key
        assert (store.run_dir(key) / "wandb" / COMPLETE).exists()  # each run its own wandb record


def test_serial_pack_isolates_a_failed_run(tmp_path):
    store = ResultsStore(tmp_path / "r")
    path = write(tmp_path, "name: p\nfixed: {epochs: 1, method: none}\ngrid: {task: [medmnist/breastmnist, digits/sklearn]}\n")
    plan = plan_sweep(load_sweep(path))
    with pytest.raises(PackFailed, match=r"1 of 2 runs of this pack failed"):
        PackJob()([r.spec.to_dict() for r in plan.runs], str(store.root), data_root=str(tmp_path / "nodata"),
                  wandb_mode="disabled", logs_template=str(tmp_path / "logs" / "%j"), pack_mode="serial")
    assert store.read_result(plan.keys[0]) is None and store.read_result(plan.keys[1])["status"] == "done"


def test_pack_mode_validation_and_resources(tmp_path):
    path = write(tmp_path, "name: x\ngrid: {task: [digits/sklearn], method: [none]}\nlauncher: {pack_mode: threads}\n")
    with pytest.raises(UsageError, match=r"launcher.pack_mode: expected processes or serial"):
        load_sweep(path)
    path = write(tmp_path, "name: x\ngrid: {task: [digits/sklearn], method: [none]}\n"
                           "launcher: {pack_mode: serial, runs_per_job: 8, cpus_per_task: 2, mem_gb: 3}\n")
    launcher = load_sweep(path).launcher
    assert pack_resources(launcher) == launcher  # one run at a time: one run's CPUs and memory
