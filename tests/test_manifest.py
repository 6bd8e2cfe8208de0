"""The manifest loader: a valid file, and every invalid case reported at once with its location."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spectrum.errors import ManifestError
from spectrum.manifest import HubSource, load_manifest

VALID = {
    "out": "artifacts",
    "evalset": {
        "corpus": {"kind": "python-stdlib"},
        "split": "validation",
        "tokenizer": None,
        "sequences": 64,
        "context": 32,
        "seed": 0,
    },
    "runs": [
        {"name": "m1-d1", "params": 1.2e6, "tokens": 2.0e7, "tokens_per_step": 4096,
         "role": "fit", "checkpoints": "runs/m1-d1"},
        {"name": "pythia", "params": "7e7", "tokens": 3.0e11, "tokens_per_step": 2097152,
         "role": "heldout",
         "checkpoints": {"hub": "EleutherAI/pythia-70m", "revisions": ["step1000", "step2000"]},
         "steps": [2000, 1000]},
    ],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems(tmp_path: Path, data: object) -> list[str]:
    with pytest.raises(ManifestError) as e:
        load_manifest(write(tmp_path, data))
    return e.value.problems


def test_valid_manifest_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, VALID))
    assert m.out == tmp_path / "artifacts"
    assert m.evalset.sequences == 64 and m.evalset.context == 32
    assert m.evalset.corpus.kind == "python-stdlib"
    first, second = m.runs
    assert first.checkpoints == tmp_path / "runs/m1-d1"
    assert first.params == 1.2e6 and first.tokens_per_step == 4096 and first.role == "fit"
    assert isinstance(second.checkpoints, HubSource)
    assert second.checkpoints.revisions == ("step1000", "step2000")
    assert second.params == 7e7  # YAML reads "7e7" as a string; the loader accepts it as a number
    assert second.steps == (1000, 2000)
    assert first.warmup_steps == 0  # optional, default 0
    data = yaml.safe_load(yaml.safe_dump(VALID))
    data["runs"][0]["warmup_steps"] = 10
    assert load_manifest(write(tmp_path, data)).runs[0].warmup_steps == 10
    assert [r.name for r in m.fit_runs] == ["m1-d1"]
    assert [r.name for r in m.heldout_runs] == ["pythia"]


def test_every_problem_is_reported_at_once_with_its_location(tmp_path: Path) -> None:
    bad = yaml.safe_load(yaml.safe_dump(VALID))
    bad["colour"] = "blue"
    bad["evalset"]["split"] = "test"
    bad["evalset"]["sequences"] = "many"
    bad["runs"][0]["params"] = -5
    bad["runs"][0]["role"] = "train"
    bad["runs"][0]["extra"] = 1
    bad["runs"][1]["name"] = "m1-d1"
    bad["runs"][1]["tokens_per_step"] = 0
    del bad["runs"][1]["tokens"]
    found = problems(tmp_path, bad)
    expected = [
        "colour: unknown key",
        "evalset.split: must be validation, train or all",
        "evalset.sequences: must be an integer",
        "runs[0] (m1-d1).params: must be positive",
        "runs[0] (m1-d1).role: must be fit or heldout",
        "runs[0] (m1-d1).extra: unknown key",
        "runs[1].name: duplicate run name 'm1-d1' (also runs[0])",
        "runs[1] (m1-d1).tokens_per_step: must be >= 1",
        "runs[1] (m1-d1).tokens: is required",
    ]
    for fragment in expected:
        assert any(fragment in p for p in found), (fragment, found)
    assert len(found) == len(expected)
    assert all(p.startswith(str(tmp_path / "checkpoints.yaml")) for p in found)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.update(runs=[]), "runs: must be a non-empty list"),
        (lambda d: d["runs"][0].pop("checkpoints"), "runs[0] (m1-d1).checkpoints: is required"),
        (lambda d: d["runs"][0].update(tokens="lots"), "runs[0] (m1-d1).tokens: must be a number"),
        (lambda d: d["runs"][0].update(name="a/b"), "runs[0].name: 'a/b' must not contain"),
        (lambda d: d["runs"][1]["checkpoints"].update(revisions=[]),
         "runs[1] (pythia).checkpoints.revisions: must be a non-empty list"),
        (lambda d: d["evalset"].update(corpus={"kind": "text"}),
         "evalset.corpus.path: a glob of files is required for kind text"),
        (lambda d: d["evalset"].update(corpus={"kind": "pdf"}), "evalset.corpus.kind: must be one of"),
        (lambda d: d["runs"][0].update(steps=[1, -2]), "runs[0] (m1-d1).steps: must be null or a list"),
        (lambda d: d["runs"][0].update(warmup_steps=-1), "runs[0] (m1-d1).warmup_steps: must be >= 0"),
        (lambda d: d["runs"][0].update(warmup_steps=2.5),
         "runs[0] (m1-d1).warmup_steps: must be an integer"),
    ],
)
def test_each_invalid_case(tmp_path: Path, mutate, fragment: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    mutate(data)
    found = problems(tmp_path, data)
    assert any(fragment in p for p in found), found


def test_two_runs_sharing_a_checkpoint_source_are_refused_naming_both(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    twin = dict(data["runs"][0], name="twin", checkpoints="./runs/other/../m1-d1/")
    hub_twin = dict(data["runs"][1], name="pythia-again",
                    checkpoints={"hub": "EleutherAI/pythia-70m", "revisions": ["step2000"]})
    other_revs = dict(data["runs"][1], name="pythia-later",
                      checkpoints={"hub": "EleutherAI/pythia-70m", "revisions": ["step3000"]})
    data["runs"] += [twin, hub_twin, other_revs]
    found = problems(tmp_path, data)
    assert len(found) == 2, found
    assert "runs[2] (twin).checkpoints: folder" in found[0]
    assert "is also the checkpoint source of runs[0] (m1-d1)" in found[0]
    assert ("runs[3] (pythia-again).checkpoints: revisions step2000 of EleutherAI/pythia-70m is "
            "also the checkpoint source of runs[1] (pythia)") in found[1]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "artifacts").write_text("not a folder")
    found = problems(tmp_path, VALID)
    assert found == [f"{tmp_path / 'checkpoints.yaml'}: out: {tmp_path / 'artifacts'} is a file, "
                     "not a folder"]
    assert (tmp_path / "artifacts").read_text() == "not a folder"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("runs: [\n  - name: a\n  bad")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)


def test_command_line_reports_problems_without_traceback(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    data["runs"][0]["role"] = "train"
    data["runs"][1]["params"] = 0
    path = write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "fit", "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing written


def test_default_manifest_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    m = load_manifest(root / "checkpoints.yaml")
    assert m.fit_runs and m.heldout_runs
    sizes = {r.params for r in m.runs}
    scales = {r.tokens for r in m.runs}
    assert len(sizes) >= 4 and len(scales) >= 3
    # the largest model size appears only in held-out runs (tests/suite/test_default_design.py
    # checks the rest of the suite's design)
    fit_sizes = {r.params for r in m.fit_runs}
    assert max(sizes) not in fit_sizes


def test_seed_of_a_run_from_its_key_or_the_suite(tmp_path: Path) -> None:
    runs = [{"name": "a", "params": 1e6, "tokens": 1e9, "tokens_per_step": 8, "role": "fit",
             "checkpoints": "runs/a", "seed": 3},
            {"name": "b", "params": 1e6, "tokens": 1e9, "tokens_per_step": 8, "role": "fit",
             "checkpoints": "runs/b", "train": {"size": "m1", "seed": 4}},
            {"name": "c", "params": 2e6, "tokens": 1e9, "tokens_per_step": 8, "role": "fit",
             "checkpoints": "runs/c"}]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"runs": runs}))
    m = load_manifest(tmp_path / "m.yaml")
    assert [r.seed for r in m.runs] == [3, 4, None]
    assert m.run("a").point == m.run("b").point != m.run("c").point
    runs[1]["seed"] = 5
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"runs": runs}))
    with pytest.raises(ManifestError, match=r"runs\[1\] \(b\)\.seed: 5 differs from train.seed 4"):
        load_manifest(tmp_path / "m.yaml")
