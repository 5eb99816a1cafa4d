"""Exceptions whose message is a complete one-line answer for the user.

The CLI prints ``geomtraj: error: <message>`` for these and exits with status 2; anything else is an
internal error (status 1).
"""


class GeomtrajError(ValueError):
    """Bad input: a one-line message that names the problem and the fix."""


class ConfigError(GeomtrajError):
    """A training configuration is invalid."""


class StoreError(GeomtrajError):
    """A store is missing, damaged or does not follow the schema."""
