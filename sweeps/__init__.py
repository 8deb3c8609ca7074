"""sweeps: grids of runs from YAML files, launched as submitit job arrays of checkpointable jobs.

    from sweeps import load_sweep, plan_sweep
    plan = plan_sweep(load_sweep("sweeps/demo.yaml"))   # -> Plan(runs=[PlannedRun(key, spec, point)], skipped=[...])

CLI: `saflex-bench sweep FILE [--executor local|slurm|debug] [--dry-run]` and `saflex-bench status FILE`
(registered in sweeps/cli.py). File format: sweeps/README.md.
"""
from sweeps.config import Launcher, SkipRule, SweepConfig, load_sweep, resolve_sweep_path
from sweeps.plan import Plan, PlannedRun, SkippedPoint, plan_sweep

__all__ = ["Launcher", "Plan", "PlannedRun", "SkipRule", "SkippedPoint", "SweepConfig", "load_sweep", "plan_sweep",
           "resolve_sweep_path"]
