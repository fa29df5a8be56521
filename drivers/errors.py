"""Exceptions raised by qhil.

Every validation failure raises :class:`ValidationError`, whose message names the
offending parameter and the allowed range, before any simulation or hardware work starts.
"""
from __future__ import annotations


class QhilError(Exception):
    """Base class of every error qhil raises on purpose."""


class ValidationError(QhilError, ValueError):
    """Bad input: ``parameter`` says which one, ``allowed`` says what would be accepted."""

    def __init__(self, parameter: str, message: str, allowed: str | None = None) -> None:
        self.parameter = parameter
        self.allowed = allowed
        text = f"{parameter}: {message}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class UnsupportedError(QhilError):
    """The request is valid but this driver cannot do it (e.g. the full state on hardware)."""
