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

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from baselines.base import Upstream

INT = r"[-+]?\d+"
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


class PolicyError(ValueError):
    """A bad policy string or parameter: one line naming it and the valid grammars."""


@dataclass(frozen=True)
class _Family:
    name: str  # keyword the family's strings start with, used to tell "malformed" from "unknown"
    grammar: str
    pattern: re.Pattern
    examples: tuple[str, ...]
    parse: Callable[..., Upstream]


_FAMILIES: dict[str, _Family] = {}


def register_method(name: str, *, grammar: str, pattern: str, examples: Sequence[str]):
    """Decorator registering `parse(**named_groups) -> Upstream` for strings fully matching `pattern`."""

    def deco(parse: Callable[..., Upstream]) -> Callable[..., Upstream]:
        if name in _FAMILIES:
            raise ValueError(f"method family {name!r} registered twice")
        _FAMILIES[name] = _Family(name, grammar, re.compile(pattern), tuple(examples), parse)
        return parse

    return deco


def list_methods() -> list[str]:
    """Canonical example policy strings, one per registered family or preset."""
    return [ex for fam in _FAMILIES.values() for ex in fam.examples]


def method_grammars() -> list[str]:
    return [fam.grammar for fam in _FAMILIES.values()]


def parse_policy(policy: str) -> Upstream:
    """Like create_method, but the PolicyError carries only the reason (for nesting: noisy(P,METHOD))."""
    s = policy.strip()
    for fam in _FAMILIES.values():
        match = fam.pattern.fullmatch(s)
        if match:
            try:
                return fam.parse(**match.groupdict())
            except PolicyError as e:  # from a config's range check, or from a nested parse
                raise PolicyError(f"bad method {policy!r}: {e}") from None
    for fam in _FAMILIES.values():
        if s == fam.name or s.startswith((fam.name + "-", fam.name + "(")):
            raise PolicyError(f"malformed method {policy!r}: expected {fam.grammar}")
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
