"""Task registry: a task is data + model factory + loss + metrics, named `FAMILY/DATASET`.

A new family is one module in this package that registers its tasks (found by importing every
module here, lazily): exact names with `@register_task("digits/sklearn")`, parametrised ones with a
pattern, e.g. `register_task("tabular/pmlb:<name>", pattern=r"tabular/pmlb:(?P<name>[\\w.-]+)",
examples=[...], lister=...)`. Modules keep heavy imports inside functions.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from bench.errors import UsageError
from bench.learners.base import get_learner_class, split_method
from bench.registry import Registry
from bench.tasks.base import ImageTask, Split, Task, TaskData
from bench.upstreams import parse_upstream

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


def check_pair(task: Task, method: str) -> None:
    """UsageError (the reason) when `method` cannot run on `task` (skip rules use the message)."""
    upstream, learner = split_method(method)
    up = parse_upstream(upstream)
    task.check_method(up)
    task.check_learner(learner)
    get_learner_class(learner).check(task, up)


def supports(task: str, method: str) -> str | None:
    """None if the pair is valid, else the reason it is not (for sweep skip rules)."""
    try:
        check_pair(get_task(task), method)
    except UsageError as e:
        return str(e)
    return None


__all__ = ["ImageTask", "Split", "Task", "TaskData", "check_pair", "get_task", "list_tasks", "register_task", "supports"]
