"""One registry for every upstream method, timm style.

A family registers a parser for its policy-string grammar:

    @register_method("rand", grammar="rand-m{M}-n{N}", pattern=rf"rand-m(?P<m>{INT})-n(?P<n>{INT})",
                     examples=["rand-m9-n2"])
    def _rand(m: str, n: str) -> Upstream: ...

`create_method(s)` matches `s` against every pattern; the parser gets the named groups as strings and
builds a frozen config whose `__post_init__` range-checks (raising PolicyError). Patterns accept a
sign on numbers on purpose, so `cutmix-a-1` reports "alpha must be > 0" instead of "unknown".
"""
from __future__ import annotations

from typing import Callable, Sequence

from baselines.base import Upstream
from lazy_registry import Registry

INT = r"[-+]?\d+"
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class PolicyError(ValueError):
    """A bad policy string or parameter: one line naming it and the valid grammars."""


# entries: grammar -> parse(**named groups); meta `family` is the keyword the family's strings start
# with, used to tell "malformed" from "unknown". Found by importing every module of baselines/.
REGISTRY = Registry("method", "baselines", error=PolicyError)


def register_method(name: str, *, grammar: str, pattern: str, examples: Sequence[str]):
    """Decorator registering `parse(**named_groups) -> Upstream` for strings fully matching `pattern`."""
    if any(e.meta["family"] == name for e in REGISTRY._entries.values()):
        raise ValueError(f"method family {name!r} registered twice")
    return REGISTRY.register(grammar, pattern=pattern, examples=examples, family=name)


def unregister_method(name: str) -> None:
    for e in [e for e in REGISTRY._entries.values() if e.meta["family"] == name]:
        REGISTRY.unregister(e.name)


def list_methods() -> list[str]:
    """Canonical example policy strings, one per registered family or preset."""
    return [ex for e in REGISTRY.entries() for ex in e.examples]


def method_grammars() -> list[str]:
    return REGISTRY.grammars()


def parse_policy(policy: str) -> Upstream:
    """Like create_method, but the PolicyError carries only the reason (for nesting: noisy(P,METHOD))."""
    s = policy.strip()
    found = REGISTRY.match(s)
    if found is not None:
        entry, groups = found
        try:
            return entry.factory(**groups)
        except PolicyError as e:  # from a config's range check, or from a nested parse
            raise PolicyError(f"bad method {policy!r}: {e}") from None
    for e in REGISTRY.entries():
        family = e.meta["family"]
        if s == family or s.startswith((family + "-", family + "(")):
            raise PolicyError(f"malformed method {policy!r}: expected {e.name}")
    raise PolicyError(f"unknown method {policy!r}")


def create_method(policy: str) -> Upstream:
    """Parse a policy string (e.g. 'rand-m9-n2', 'noisy(0.3,cutmix-a1.0)') into its Upstream."""
    if not isinstance(policy, str):
        raise PolicyError(f"method must be a string, got {type(policy).__name__} {policy!r} "
                          f"(valid: {', '.join(method_grammars())})")
    try:
        return parse_policy(policy)
    except PolicyError as e:
        raise PolicyError(f"{e} (valid: {', '.join(method_grammars())})") from None


get_method: Callable[[str], Upstream] = create_method  # the registries' get_* spelling
