"""The engine's door to baselines/: a policy string parsed into its Upstream, errors as UsageError."""
from __future__ import annotations

import baselines
from bench.errors import UsageError


def parse_upstream(upstream: str) -> baselines.Upstream:
    try:
        return baselines.create_method(upstream)
    except baselines.PolicyError as e:
        raise UsageError(str(e)) from None
