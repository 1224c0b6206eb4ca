"""Typed errors: the user-facing part of the interface.

Every error a user can cause is an ``EdgeplanError`` whose message names the
file, field, layer or device and says what would fix it. The CLI prints it as
one line on stderr and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class EdgeplanError(Exception):
    """Base class for errors caused by user input or the environment."""

    exit_code = 2


class ModelError(EdgeplanError):
    """A model could not be loaded or traced (zoo name, file.py:callable, input shape)."""


class ProfileError(EdgeplanError):
    """A board profile or cluster file is invalid (names the file and field)."""


class PlanError(EdgeplanError):
    """No plan satisfies the request, or a plan file is invalid."""


class CompileError(EdgeplanError):
    """A stage failed to compile for its target, or a toolchain is missing."""


class ArtifactError(EdgeplanError):
    """An artifact folder is missing files, has extra files, or was altered."""


class RuntimeFault(EdgeplanError):
    """A board or stage failed while running (names the board and stage)."""
