"""``spectrum plan``: the cost of a manifest before any work, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spectrum.layout import loss_shard
from spectrum.manifest import load_manifest
from spectrum.plan import format_plan, make_plan
from tests.hub_world import _add_snapshot

ROOT = Path(__file__).resolve().parents[1]


def _preset_with_cache(tmp_path: Path, name: str) -> Path:
    """The preset, reading an (empty) cache of its own under ``tmp_path/hub``."""
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    for run in data["runs"]:
        run["checkpoints"] = {**run["checkpoints"], "cache_dir": "hub"}
    (tmp_path / "hub").mkdir()
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_plan_counts_the_work_and_lists_every_missing_revision(tmp_path):
    path = _preset_with_cache(tmp_path, "polypythias")
    manifest = load_manifest(path)
    # two revisions of one repository are cached; one checkpoint of another is evaluated
    root = tmp_path / "hub" / "models--EleutherAI--pythia-70m-seed5"
    for rev in ("step0", "step143000"):
        _add_snapshot(root, rev, {"config.json": b"{}", "model.safetensors": b"w"})
    shard = loss_shard(manifest.out, "pythia-14m", 2000)
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"")
    plan = make_plan(manifest)

    n = 512 * 2047  # sequences x (context - 1)
    assert plan.tokens == n
    assert len(plan.runs) == 25 and all(rp.checkpoints == 31 for rp in plan.runs)
    by = {rp.run.name: rp for rp in plan.runs}
    assert by["pythia-14m"].evaluated == 1 and by["pythia-14m"].to_evaluate == 30
    assert sum(rp.to_evaluate for rp in plan.runs) * n == (25 * 31 - 1) * n
    seed5 = by["pythia-70m-seed5"].missing
    assert len(seed5) == 29 and "step0" not in seed5 and "step143000" not in seed5
    assert all(len(by[r].missing) == 31 for r in by if r != "pythia-70m-seed5")
    # Pythia's shape for FLOPs before anything is downloaded: 2M + 2Vd + 2 L n_ctx d
    assert by["pythia-70m-seed6"].flops_per_token == \
        2 * 18_915_328 + 2 * 50_304 * 512 + 2 * 6 * 2048 * 512

    text = format_plan(plan)
    assert "no GPU throughput has been measured yet" in text
    assert "to download: 773 revisions" in text
    assert "| pythia-410m-seed9 | heldout | 302 M | 31 | 0 | all 31 |" in text
    missing = text[text.index("not in the local Hugging Face cache"):]
    assert "EleutherAI/pythia-70m-seed5" in missing and "EleutherAI/pythia-410m-seed9" in missing
    assert all(f"step{s}" in missing for s in (0, 2000, 16000, 143000))

    hours = (25 * 31 - 1) * n / 1e6 / 3600
    assert f"{hours:,.1f} h of GPU time at the 1,000,000 tokens/s given" in \
        format_plan(plan, tokens_per_second=1e6)


def test_plan_prints_the_table_for_both_presets_from_the_command_line(capsys):
    from pipelines.cli import main

    for name in ("pythia", "polypythias"):
        assert main(["plan", "--config", str(ROOT / "configs" / f"{name}.yaml")]) == 0
        out = capsys.readouterr().out
        assert out.startswith("evalset: 1,048,064 tokens per checkpoint")
        assert "| run | role | M | checkpoints |" in out and "losses stage:" in out
    assert main(["plan", "--config", str(ROOT / "configs" / "pythia.yaml"),
                 "--utilisation", "0"]) == 2
    assert "--utilisation must be in (0, 1]" in capsys.readouterr().err
