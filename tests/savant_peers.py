"""The Savant peers the tests use (``from tests import savant_peers as sp``).

Where savant-rs 0.3.0 installs (its wheels: CPython 3.10 to 3.12 on x86_64, 3.11 on aarch64)
this is tests/savant_rs_peers.py: savant-rs message builders, readers and writers. Elsewhere
(Python 3.13) importing it still works so that the tests of a module that need no savant-rs
run, and a test that does skips, with this reason, at its first use of a peer.
"""

from __future__ import annotations

import sys

import pytest

try:
    import savant_rs  # noqa: F401
except ImportError as exc:
    AVAILABLE = False
    REASON = (f"needs savant-rs 0.3.0 peers, which have no wheel for Python "
              f"{sys.version_info.major}.{sys.version_info.minor} here ({exc})")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        pytest.skip(REASON)
else:
    AVAILABLE = True
    REASON = ""
    from tests.savant_rs_peers import *  # noqa: F401,F403
