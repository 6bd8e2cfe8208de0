"""The report opened in a real browser (headless Chromium): a URL fragment preselects a cell and the
DOM holds example tokens of that run and kind; a screenshot of the explorer is drawn."""

from html.parser import HTMLParser

import numpy as np
import pytest

from pipelines.cli import main as cli
from spectrum.tools.screenshot import dump_dom, explorer_page, find_chromium, screenshot
from tests.examples_world import explorer_world, tokenizer_folder
from tests.synthetic import DEFAULT_RUNS

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is not installed, so the report cannot be opened in a browser; install "
           "Debian's chromium package (`apt-get install -y chromium`, as .ci/run does as root)")

RUNS = [r for r in DEFAULT_RUNS if r[0] in ("m1-d1", "m3-d3")]


class Examples(HTMLParser):
    """The attributes of every element of class token-example, and the marked targets' text."""

    def __init__(self) -> None:
        super().__init__()
        self.examples: list[dict] = []
        self.marks: list[str] = []
        self._in_mark = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "token-example" in (a.get("class") or "").split():
            self.examples.append(a)
        self._in_mark = tag == "mark"
        if self._in_mark:
            self.marks.append("")

    def handle_endtag(self, tag):
        if tag == "mark":
            self._in_mark = False

    def handle_data(self, data):
        if self._in_mark:
            self.marks[-1] += data


def _parse(dom: str) -> Examples:
    p = Examples()
    p.feed(dom)
    return p


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    tok = tokenizer_folder(root / "tokenizer")
    manifest = explorer_world(root, tok, n_seq=10, context=24, n_steps=10, runs=RUNS)
    assert cli(["report", "--config", str(manifest), "--bootstrap", "10",
                "--spectrum-bins", "16"]) == 0
    return root / "artifacts" / "report" / "index.html"


def test_a_fragment_preselects_run_and_kind(report):
    assert report.stat().st_size < 8e6
    dom = dump_dom(report, "run=m3-d3&kind=learned")
    found = _parse(dom)
    assert len(found.examples) >= 20
    assert {(e["data-run"], e["data-kind"]) for e in found.examples} == {("m3-d3", "learned")}
    # every target highlighted, decoded to text (a whitespace token is text too)
    assert len(found.marks) == len(found.examples) and all(found.marks)
    assert sum(1 for m in found.marks if m.strip() and not m.startswith("[")) >= 10
    assert "decoded with the evalset" in dom and "Showing " in dom
    # another cell, narrowed by band: only that band's examples
    found = _parse(dump_dom(report, "run=m1-d1&kind=learned&band=late"))
    assert found.examples
    assert {(e["data-run"], e["data-kind"], e["data-band"]) for e in found.examples} == \
        {("m1-d1", "learned", "late")}


def test_without_a_fragment_the_first_runs_learned_tokens_are_shown(report):
    found = _parse(dump_dom(report))
    assert len(found.examples) >= 20
    assert {(e["data-run"], e["data-kind"]) for e in found.examples} == {("m1-d1", "learned")}


def test_a_screenshot_of_the_explorer(report, tmp_path):
    import matplotlib.image as mpimg

    page = tmp_path / "explorer.html"
    page.write_text(explorer_page(report), encoding="utf-8")
    png = screenshot(page, tmp_path / "explorer.png", "run=m3-d3&kind=learned", size=(900, 700))
    img = mpimg.imread(png)
    assert img.shape[:2] == (700, 900)
    assert float(np.std(img[..., :3])) > 0.05  # drawn, not a blank page
