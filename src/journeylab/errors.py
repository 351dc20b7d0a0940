"""User-facing errors: one paragraph naming the file, the column and the fix."""
from __future__ import annotations


class JourneylabError(Exception):
    """An error caused by input or configuration, shown to the user without a traceback."""


class InputError(JourneylabError):
    """A raw input file cannot be used as it is (missing, empty, wrong delimiter, columns...)."""


class ConfigError(JourneylabError):
    """params.yaml is missing a setting or has a value of the wrong type."""
