"""Writing one benchmark's section into a report that holds others (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path


def section_write(path: Path, section: str, markers: tuple[str, str]) -> None:
    """Replace the text between `markers` (both included, and the newline after the end
    marker) with `section`, which starts and ends with them; append it if they are absent.
    The rest of the file is kept as it is."""
    text = path.read_text() if path.exists() else ""
    start, end = markers
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
