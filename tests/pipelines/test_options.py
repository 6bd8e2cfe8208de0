"""Stage options: the command line generated from the stages' dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.curriculum_export import CurriculumExportOptions
from pipelines.executor import RayExecutor, executor_kind, make_executor
from pipelines.losses import LossesOptions
from pipelines.options import add_options, from_namespace, option, shared_with
from spectrum.errors import SpectrumError

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTING = ("losses", "fit", "report")  # the stages with --executor among those of `run`
REQUIRED = {"export-curriculum": ["--target-steps", "10"], "import-losses": ["--mapping", "m.yaml"]}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _help(parser: argparse.ArgumentParser, flag: str) -> str:
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action.help


def test_every_stage_parses_its_defaults_into_its_options():
    for name in cli.STAGES:
        args = cli.build_parser().parse_args([name, *REQUIRED.get(name, [])])
        options = from_namespace(cli._stage(name).OPTIONS, args)
        assert options == cli._stage(name).OPTIONS(**{
            f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.default is dataclasses.MISSING}), name


def test_each_stage_runs_where_the_executor_help_says_by_default():
    parser = _subparsers()["run"]
    text = _help(parser, "--executor")
    said = {}  # "ray for the losses stage; local for the fit and report stages"
    for kind, stages in re.findall(r"(local|ray) for the ([a-z ,]+?) stages?\b", text):
        said.update({s: kind for s in re.split(r", | and ", stages)})
    assert said == {"losses": "ray", "fit": "local", "report": "local"}
    for name in DISTRIBUTING:
        args = cli.build_parser().parse_args([name])
        options = from_namespace(cli._stage(name).OPTIONS, args)
        assert options.executor is None and options.ray_address is None
        assert executor_kind(options.executor, options.ray_address,
                             cli._stage(name).EXECUTOR) == said[name], name


def test_a_ray_address_means_ray_unless_the_executor_is_local():
    for default in ("local", "ray"):
        assert executor_kind(None, "auto", default) == "ray"
        assert executor_kind("ray", None, default) == "ray"
        assert executor_kind("local", None, default) == "local"
    with pytest.raises(SpectrumError, match="--ray-address 1.2.3.4:6379 names a Ray cluster"):
        executor_kind("local", "1.2.3.4:6379", "ray")


def test_ray_address_local_starts_a_local_ray_as_no_address_does():
    for address in ("local", None):
        placement = make_executor("ray", ray_address=address, device="cpu", workers=3,
                                  cpus_per_worker=1)
        assert isinstance(placement.executor, RayExecutor) and placement.distributed
        assert placement.executor.address is None and placement.executor.workers == 3
        assert placement.executor.gpus_per_worker == 0
        assert (placement.device, placement.threads) == ("cpu", 1)
    local = make_executor("local", device="cpu", cpus_per_worker=4)
    assert not local.distributed and local.threads is None


def test_help_texts_name_only_flags_of_their_stage():
    for name, parser in _subparsers().items():
        flags = {s for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            named = set(re.findall(r"--[a-z][a-z-]*", action.help or ""))
            assert named <= flags, (name, action.option_strings, named - flags)


def test_run_hands_one_value_of_a_shared_flag_to_every_stage():
    args = cli.build_parser().parse_args(["run", "--device", "cpu", "--force",
                                          "--chunk-size", "7", "--executor", "ray",
                                          "--ray-address", "auto", "--workers", "3",
                                          "--cpus-per-worker", "2"])
    stages = {name: from_namespace(cli._stage(name).OPTIONS, args) for name in cli.RUN_ORDER}
    assert {n: o.device for n, o in stages.items() if hasattr(o, "device")} == \
        {"suite": "cpu", "losses": "cpu", "fit": "cpu"}
    assert all(o.force for o in stages.values())
    assert stages["fit"].chunk_size == 7
    for name in DISTRIBUTING:
        o = stages[name]
        assert (o.executor, o.ray_address, o.workers, o.cpus_per_worker) == \
            ("ray", "auto", 3, 2), name


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


def test_light_declarations_repeat_the_library_constants():
    from pipelines.report_options import ReportOptions
    from spectrum.analysis.runs.run_data import CHUNK
    from spectrum.fit.kinds import STEP_KINDS as DEFAULT_KINDS
    from spectrum.fit.worker import DTYPES

    assert ReportOptions().spectrum_kinds == ",".join(DEFAULT_KINDS)
    assert ReportOptions().token_chunk == CHUNK
    assert cli._declared("fit").FIT_DTYPES == tuple(DTYPES)


def test_the_help_of_a_light_stage_loads_neither_torch_nor_the_analyses():
    """``spectrum <stage> --help`` builds the parser from the stage's light declarations."""
    heavy = ("torch", "numpy", "polars", "pyarrow", "transformers", "ray")
    code = ("import sys\nfrom pipelines.cli import main\n"
            "try:\n    main([sys.argv[1], '--help'])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    for name in cli.DECLARED_IN:
        proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", (name, proc.stdout)
        first = dataclasses.fields(cli._declared(name).OPTIONS)[0].name.replace("_", "-")
        assert f"--{first}" in proc.stdout  # the stage's own options were listed
