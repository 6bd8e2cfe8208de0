"""Progress bars: redraws on a terminal, occasional plain lines in a log file."""

from __future__ import annotations

import io

from spectrum import console


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream: io.StringIO, steps: int = 50) -> str:
    with console.progress(total=steps, desc="shards", file=stream) as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def test_progress_in_a_log_file_is_lines_without_carriage_returns() -> None:
    text = _run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    # the first and the last state only: 50 fast updates within one interval are not 50 lines
    assert 1 <= len(lines) <= 3
    assert lines[-1].startswith("shards: 100% 50/50")


def test_progress_on_a_terminal_redraws_in_place() -> None:
    text = _run(_Terminal())
    assert "\r" in text


def test_progress_is_silent_when_quiet() -> None:
    console.set_verbosity("quiet")
    try:
        assert _run(io.StringIO()) == ""
    finally:
        console.set_verbosity("normal")
