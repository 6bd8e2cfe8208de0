"""``spectrum export-curriculum`` on a user's own runs (checkpoints written by Hugging Face's
``Trainer``, :mod:`tests.trainer_checkpoints`): a checkpoint that fails is reported once, and the
corpus named with ``--corpus`` is the target dataset unless ``--target-ids`` says otherwise."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from pipelines.cli import main as cli
from spectrum.curriculum.weights import CurriculumWeights
from tests.trainer_checkpoints import TrainerRuns, write_manifest

LOCAL = ["--executor", "local", "--device", "cpu"]


def _export(path: Path, *extra: str) -> int:
    return cli(["export-curriculum", "--config", str(path), "--target-steps", "22",
                "--phases", "2", *LOCAL, *extra])


def test_a_failed_checkpoint_is_reported_once(trainer_runs: TrainerRuns, tmp_path, capfd):
    run = next(r for r in trainer_runs.runs if r.name == "gpt2-tied")
    folder = tmp_path / "runs" / run.name
    shutil.copytree(run.folder, folder)
    ckpt = folder / "checkpoint-10"
    config = json.loads((ckpt / "config.json").read_text())
    config["n_layer"] = 3  # weights of a third layer are missing
    (ckpt / "config.json").write_text(json.dumps(config))
    runs = dataclasses.replace(trainer_runs, runs=(dataclasses.replace(run, folder=folder),))
    path = write_manifest(runs, tmp_path / "suite")
    capfd.readouterr()
    assert _export(path) == 1  # the losses stage finished what it could
    err = capfd.readouterr().err
    assert "Traceback" not in err
    naming = [line for line in err.splitlines() if str(ckpt) in line]
    assert len(naming) == 1, err
    assert naming[0].startswith(f"error: checkpoint {ckpt}: its weights do not fit its "
                                "config.json: "), naming
    # the stage's summary stays, once
    summary = [line for line in err.splitlines() if "checkpoints failed" in line]
    assert summary == ["error: losses: 5 shards written, 0 current ones skipped, 1 checkpoints "
                       f"failed; {summary[0].split('failed; ')[1]}"], err


def test_the_corpus_exported_is_the_default_target(trainer_runs: TrainerRuns, tmp_path, capfd):
    """The manifest's corpus is a separate text (the same documents under other names, as a
    user's evaluation text); ``--corpus`` names the training text: every exported document is
    in the target dataset."""
    training = Path(trainer_runs.corpus).parent
    other = tmp_path / "evaluation_text"
    other.mkdir()
    for f in sorted(training.glob("*.txt")):
        shutil.copy(f, other / f"eval_{f.name}")
    path = write_manifest(trainer_runs, tmp_path / "suite", ["gpt2-tied"])
    manifest = yaml.safe_load(path.read_text())
    manifest["evalset"]["corpus"]["path"] = str(other / "*.txt")
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    capfd.readouterr()
    assert _export(path, "--corpus", f"text:{trainer_runs.corpus}") == 0
    err = capfd.readouterr().err
    out = tmp_path / "suite" / "artifacts" / "curriculum"
    report = json.loads((out / "missing_ids.json").read_text())
    coverage = json.loads((out / "coverage.json").read_text())
    assert coverage["documents"] > 0
    assert report["missing_ids"] == 0, report
    assert f"--corpus text:{trainer_runs.corpus}" in report["target"]
    assert "not in the target dataset" not in err
    # --target-ids still wins: a target of one exported document lacks the others
    first = CurriculumWeights.read(out).documents["doc_id"][0]
    (tmp_path / "ids.txt").write_text(f"{first}\n")
    assert _export(path, "--corpus", f"text:{trainer_runs.corpus}",
                   "--target-ids", str(tmp_path / "ids.txt")) == 0
    report = json.loads((out / "missing_ids.json").read_text())
    assert report["missing_ids"] == coverage["documents"] - 1, report
