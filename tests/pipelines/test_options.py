"""Stage options: the command line generated from the stages' dataclasses."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pipelines import cli
from pipelines.curriculum_export import CurriculumExportOptions
from pipelines.losses import LossesOptions
from pipelines.options import add_options, from_namespace, option, shared_with

# every stage's flags and defaults as the hand-written argparse parsers declared them
# (the curriculum stages' --executor defaulted to None, "the losses stage's": ray)
FLAGS = {
    "suite": {"--device": "auto", "--force": False, "--suite-workers": None},
    "evalset": {"--force": False},
    "losses": {"--device": "auto", "--executor": "ray", "--ray-address": None,
               "--num-gpus": None, "--force": False, "--workers": None, "--cpus-per-worker": 1,
               "--dtype": "auto", "--batch-size": None, "--retries": 2},
    "fit": {"--device": "auto", "--fit-dtype": "float32", "--chunk-size": 1 << 20,
            "--fit-kernel": "auto", "--force": False, "--ray-address": None, "--workers": None,
            "--cpus-per-worker": 1},
    "report": {"--spectrum-bins": 40, "--bootstrap": 200,
               "--spectrum-kinds": "learned,forgotten,unfinished", "--split-seed": 0,
               "--ridge": 0.5, "--token-chunk": 1 << 16, "--force": False, "--ray-address": None,
               "--workers": None, "--cpus-per-worker": 1},
}
LEARNABILITY = {"--runs": None, "--sequences": None, "--phases": 4, "--floor": 0.25,
                "--device": "auto", "--executor": "ray", "--ray-address": None,
                "--num-gpus": None, "--force": False}
FLAGS["export-curriculum"] = {"--target-steps": None, "--tokens-per-step": None,
                              "--target-ids": None, "--target-warmup-steps": None, "--corpus": None, "--text-field": None,
                              "--split": "train", **LEARNABILITY}
FLAGS["curriculum-test"] = {"--size": None, "--seeds": 8, "--seed-base": 1000, "--steps": None,
                            "--epochs": 2.0, "--buckets": 8, "--eval-sequences": 128,
                            "--arms": "uniform,curriculum,freq_shuffled,random,timing_flat",
                            "--budgets": "0.5,0.7,1,1.4", "--workers": None, **LEARNABILITY}
FLAGS["run"] = {k: v for name in cli.RUN_ORDER for k, v in FLAGS[name].items()}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_flag_keeps_its_name_and_default():
    for name, parser in _subparsers().items():
        found = {a.option_strings[-1]: a.default for a in parser._actions
                 if a.option_strings and a.dest not in ("help", "config", "verbosity", "debug")}
        assert found == FLAGS[name], name
    required = [a.option_strings[-1] for a in _subparsers()["export-curriculum"]._actions
                if a.required]
    assert required == ["--target-steps"]


def test_run_hands_one_value_of_a_shared_flag_to_every_stage():
    args = cli.build_parser().parse_args(["run", "--device", "cpu", "--force",
                                          "--chunk-size", "7", "--executor", "local"])
    stages = {name: from_namespace(cli._stage(name).OPTIONS, args) for name in cli.RUN_ORDER}
    assert {n: o.device for n, o in stages.items() if hasattr(o, "device")} == \
        {"suite": "cpu", "losses": "cpu", "fit": "cpu"}
    assert all(o.force for o in stages.values())
    assert stages["fit"].chunk_size == 7 and stages["losses"].executor == "local"


def test_an_option_declared_two_ways_cannot_be_composed():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class A:
        device: str = option("auto", "where")

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class B:
        device: str = option("cpu", "where")

    add_options(argparse.ArgumentParser(), [A, A])  # the same declaration: added once
    with pytest.raises(TypeError, match="device"):
        add_options(argparse.ArgumentParser(), [A, B])


def test_a_stage_run_by_another_gets_its_own_defaults_and_the_shared_options():
    export = CurriculumExportOptions(target_steps=10, device="cpu", executor="local", force=True,
                                     phases=7, sequences=3)
    losses = shared_with(LossesOptions, export)
    assert losses == LossesOptions(device="cpu", executor="local", force=True)
    assert losses.retries == 2 and losses.batch_size is None


def test_bad_options_of_a_later_stage_are_refused_before_any_work(tmp_path, capsys):
    missing = tmp_path / "nothing.yaml"
    assert cli.main(["run", "--config", str(missing), "--spectrum-kinds", "learnt",
                     "--chunk-size", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --chunk-size must be positive")
    assert cli.main(["run", "--config", str(missing), "--spectrum-kinds", "learnt"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --spectrum-kinds: unknown kind(s) learnt")
