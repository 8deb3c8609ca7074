"""Task registry: a task is a dataset + default model + metrics, named `FAMILY/DATASET`.

A new family is one module here that calls `register_task` for each of its datasets, plus an import
line below.
"""
from __future__ import annotations

from typing import Callable

from bench.errors import UsageError
from bench.tasks.base import Splits, Task

_TASKS: dict[str, Callable[[], Task]] = {}
_CACHE: dict[str, Task] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    if name in _TASKS:
        raise ValueError(f"task {name!r} registered twice")
    _TASKS[name] = factory


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise UsageError(f"unknown task '{name}' (valid: {', '.join(list_tasks())})")
    if name not in _CACHE:
        _CACHE[name] = _TASKS[name]()
    return _CACHE[name]


def supports(task: str, method: str) -> str | None:
    """None if the pair is valid, else the reason it is not (for sweep skip rules)."""
    try:
        from bench.spec import split_method

        upstream, saflex = split_method(method)
        t = get_task(task)
        t.check_method(upstream)
        if saflex:
            t.check_saflex()
    except UsageError as e:
        return str(e)
    return None


from bench.tasks import digits, medmnist  # noqa: E402,F401  (registration)

__all__ = ["Splits", "Task", "get_task", "list_tasks", "register_task", "supports"]
