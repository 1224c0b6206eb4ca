"""Skip conditions shared by the heavy test tiers, so every tier says why it skipped in one way."""

from __future__ import annotations

import os
import shutil

import pytest


def netns_reason() -> str | None:
    """Why the emulated-testbed tier cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "netns tier needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"netns tier needs `{tool}` (apt-get install iproute2)"
    return None


netns_tier = pytest.mark.skipif(netns_reason() is not None, reason=netns_reason() or "")
