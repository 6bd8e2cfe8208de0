"""Open the report in headless Chromium: the DOM after its scripts ran, and screenshots.

Chromium is Debian's ``chromium`` package (also found as ``chromium-browser`` or
``google-chrome``). Every call starts a fresh browser with a fresh profile, no network services,
no GPU and no sandbox (so it runs as root in a container).

    python -m spectrum.tools.screenshot artifacts/report/index.html docs/token_explorer.png \\
        --fragment 'run=m1-d1&kind=learned'

writes a screenshot of the report's token explorer alone (cut from the report into a page of its
own, so the picture starts at the explorer).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spectrum.errors import SpectrumError

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")
SECTION = ('<section id="token-explorer">', "</section>")


def find_chromium() -> str | None:
    """The path of a Chromium executable on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(page: Path, fragment: str, extra: list[str], timeout: float) -> str:
    exe = find_chromium()
    if exe is None:
        raise SpectrumError(f"no Chromium on PATH (looked for {', '.join(NAMES)}); "
                            "install Debian's chromium package")
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        try:
            done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SpectrumError(f"{page}: Chromium did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise SpectrumError(f"{page}: Chromium exited with {done.returncode} ({tail[0]})")
    return done.stdout


def dump_dom(page: str | Path, fragment: str = "", *, timeout: float = 120) -> str:
    """The serialized DOM of ``page`` opened at ``#fragment``, after its scripts ran."""
    return _run(Path(page), fragment, ["--dump-dom"], timeout)


def screenshot(page: str | Path, png: str | Path, fragment: str = "", *,
               size: tuple[int, int] = (1200, 1400), timeout: float = 120) -> Path:
    """A PNG of the top ``size`` (width, height) pixels of ``page`` opened at ``#fragment``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(Path(page), fragment, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"],
         timeout)
    if not png.is_file():
        raise SpectrumError(f"{page}: Chromium wrote no screenshot to {png}")
    return png


def explorer_page(report: str | Path) -> str:
    """A page holding only the token explorer of the report ``report`` (an index.html)."""
    text = Path(report).read_text(encoding="utf-8")
    start = text.find(SECTION[0])
    end = text.find(SECTION[1], start)
    if start < 0 or end < 0:
        raise SpectrumError(f"{report}: holds no token explorer; run `spectrum report` again")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Token explorer</title><style>body{font-family:system-ui,sans-serif;"
            "max-width:1150px;margin:1em auto;padding:0 1em;color:#222}</style></head><body>"
            f"{text[start:end + len(SECTION[1])]}</body></html>")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="screenshot of a report's token explorer")
    p.add_argument("report", help="the report's index.html")
    p.add_argument("png", help="where to write the screenshot")
    p.add_argument("--fragment", default="", help="URL fragment, e.g. 'run=m1-d1&kind=learned'")
    p.add_argument("--size", default="1200x1400", help="window WIDTHxHEIGHT (default 1200x1400)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "explorer.html"
            page.write_text(explorer_page(args.report), encoding="utf-8")
            print(screenshot(page, args.png, args.fragment, size=(w, h)))
    except (SpectrumError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
