"""Shared pytest setup: make the helpers in tests/ (e.g. ``ddp_harness``) importable as top-level modules."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
