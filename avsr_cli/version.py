"""The version of avsr (one place: pyproject reads it, `avsr --version` prints it)."""

__version__ = "0.1.0"
