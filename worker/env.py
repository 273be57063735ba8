"""Settings read from the environment (QBENCH_*), checked: a bad value is one line naming it."""

from __future__ import annotations

import os

from qbench.errors import ConfigError


def env_int(name: str, default: int, minimum: int = 1, maximum: int = 1 << 62) -> int:
    """An integer setting; ConfigError when it is not a whole number in [minimum, maximum]."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    text = raw.strip()
    # int() takes '1_000' and unicode digits; a setting is plain ASCII digits (and a sign).
    if not text.lstrip("+-").isascii() or not text.lstrip("+-").isdigit() or len(text) > 20:
        raise ConfigError(f"{name}={raw!r}: not an integer")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={raw!r}: must be between {minimum} and {maximum}")
    return value


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds ('nan', 'inf' and '0' would make a loop spin or
    never wake up)."""
    import math

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number of seconds") from None
    if not math.isfinite(value) or value <= 0 or value > 365 * 24 * 3600:
        raise ConfigError(f"{name}={raw!r}: must be a positive, finite number of seconds")
    return value
