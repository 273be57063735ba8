"""Errors a user can fix, each printed as one line naming the field or file (no torch here).

Models, quantizers and the manifest all raise these; this module imports nothing of qbench,
so any of them may import it without a cycle.
"""

from __future__ import annotations


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the field or file."""


class ModelError(ValueError):
    """A model that cannot be built or loaded; one line naming the field or file."""


class ConfigError(ValueError):
    """A setting in the environment (QBENCH_*) that cannot be used; one line naming it."""
