"""The registry's errors; every one is a ``RegistryError``."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry call that cannot be done as asked."""


class SpecExists(RegistryError):
    """``create_spec`` with an id that is taken."""


class UnknownSpec(RegistryError):
    """No model spec with that id."""


class UnknownRun(RegistryError):
    """No training run with that id."""


class UnknownVersion(RegistryError):
    """The spec has no published version with that number."""


class RunConflict(RegistryError):
    """``create_run`` with an existing run id but another spec or mode."""


class InvalidTransition(RegistryError):
    """A run status change that its lifecycle forbids (a finished run stays finished)."""
