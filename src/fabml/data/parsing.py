"""Small text-field checks shared by the readers of hand-written files (annotation lines, input CSV headers)."""

from __future__ import annotations


def is_number(text: str) -> bool:
    """True when ``float(text)`` parses (``"3"``, ``"-0.5"``, ``"1e3"``, ``"nan"``), else False."""
    try:
        float(text)
    except ValueError:
        return False
    return True
