"""Free text from outside (agent progress messages, names, error texts) made safe for a log line.

Control and format characters are written as escapes (`\\n`, `\\x1b`, `\\u2028`), so a value
cannot start a forged log line, move the cursor of a terminal or hide text; backslashes
are doubled so an escape in the output always means an escaped character. Printable text,
non-ASCII letters included, is kept as it is.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_safe(text: object) -> str:
    """`text` as one printable log-line fragment (see the module docstring)."""
    escaped = _UNSAFE.sub(_escape, str(text))
    # Any other format/control character the pattern does not list (category C*).
    if escaped.isprintable():
        return escaped
    return "".join(
        c if c.isprintable() or unicodedata.category(c)[0] != "C" else f"\\u{ord(c):04x}" for c in escaped
    )
