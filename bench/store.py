"""Kept so `from bench.store import ...` keeps working: the store lives in bench/results/store.py."""
import sys
from bench.results import store as _store
sys.modules[__name__] = _store
