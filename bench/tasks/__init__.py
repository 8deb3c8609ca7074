"""Task registry: a task is data + model factory + loss + metrics, named `FAMILY/DATASET`.

A new family is one module in this package that registers its tasks (found by importing every
module here, lazily): exact names with `@register_task("digits/sklearn")`, parametrised ones with a
pattern, e.g. `register_task("tabular/pmlb:<name>", pattern=r"tabular/pmlb:(?P<name>[\\w.-]+)",
examples=[...], lister=...)`. Modules keep heavy imports inside functions.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from bench.errors import UsageError
from bench.registry import Registry
from bench.tasks.base import ImageTask, Split, Task, TaskData

REGISTRY = Registry("task", "bench.tasks")


def register_task(name: str, factory: Callable[..., Task] | None = None, *, pattern: str | None = None,
                  examples: Iterable[str] = (), lister: Callable[[], Iterable[str]] | None = None):
    """Register a task class/factory under `name` (call directly or use as a decorator)."""
    deco = REGISTRY.register(name, pattern=pattern, examples=examples, lister=lister)
    return deco(factory) if factory is not None else deco


def list_tasks() -> list[str]:
    return REGISTRY.names()


def get_task(name: str) -> Task:
    task = REGISTRY.get(name)
    if not task.name:
        task.name = name
    return task


def supports(task: str, method: str) -> str | None:
    """None if the pair is valid, else the reason it is not (for sweep skip rules)."""
    from bench.spec import check_pair

    try:
        check_pair(get_task(task), method)
    except UsageError as e:
        return str(e)
    return None


__all__ = ["ImageTask", "Split", "Task", "TaskData", "get_task", "list_tasks", "register_task", "supports"]
