"""The tour notebook runs top to bottom against a small run's artifacts."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from pipelines.cli import main as cli
from tests.synthetic import DEFAULT_RUNS, make_synthetic_artifacts

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb"


def test_tour_notebook_executes(tmp_path, monkeypatch):
    runs = [r for r in DEFAULT_RUNS if r[0] in ("m1-d1", "m3-d3", "m2-d2")]
    manifest = make_synthetic_artifacts(tmp_path, n_seq=6, context=16, n_steps=10, runs=runs)
    assert cli(["report", "--config", str(manifest), "--bootstrap", "10",
                "--spectrum-bins", "16"]) == 0
    monkeypatch.setenv("SPECTRUM_ARTIFACTS", str(tmp_path / "artifacts"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # trajectories, spectrum, slice
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "heldout_runs" in text and "m3-d3" in text
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert " examples of 3 runs" in streams  # the token explorer's draws, as a frame
