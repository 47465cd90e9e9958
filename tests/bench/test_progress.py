"""The bench/stress progress bar: drawn for a person at a terminal, silent in CI and logs."""

from __future__ import annotations

import io

import pytest

from bench.progress import progress_steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO) -> str:
    with progress_steps("make stress", 3, first="kill", stream=stream) as advance:
        for following in ("outage", "heartbeat", "done"):
            advance(following)
    return stream.getvalue()


def test_a_terminal_gets_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    shown = _run(Terminal())
    assert "make stress" in shown
    assert "3/3" in shown


def test_ci_and_redirected_output_stay_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert _run(io.StringIO()) == ""  # a file or a pipe
    monkeypatch.setenv("CI", "true")
    assert _run(Terminal()) == ""
