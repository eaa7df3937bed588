"""Exceptions whose message is shown to the user as one line, without a traceback."""

from __future__ import annotations


class FabmlError(Exception):
    """Base class: the message says what is wrong and what to do."""


class DataError(FabmlError):
    """Input data is missing, unreadable or has the wrong shape or coding."""


class ConfigError(FabmlError):
    """A setting is unknown or has an invalid value."""


class TrainingError(FabmlError):
    """Training cannot continue (e.g. a NaN loss); the last good checkpoint is kept."""
