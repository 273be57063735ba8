"""Text from manifests, files and broker messages, made safe to print on a terminal.

A path or id may hold escape sequences (ESC, CSI), carriage returns, backspaces or bidi
overrides that would erase, hide or reorder what is printed around it. Each such character is
shown as its Python escape instead (\\x1b, \\r, \\u202e), so the line reads as what it is.
"""

from __future__ import annotations

import unicodedata

_KEEP = {"\n", "\t"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, keep_newlines: bool = False) -> str:
    """str(text) with every control, format (bidi) and line/paragraph separator character
    escaped; newlines and tabs kept only when keep_newlines."""
    keep = _KEEP if keep_newlines else set()
    return "".join(
        ch if ch in keep or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co")
        else _escape(ch) for ch in str(text))
