"""The Pythia and PolyPythias presets, and ``params: auto``.

The facts are checked against EleutherAI's documentation as written out here (the pythia
README and training configurations, the model cards' parameter table), not against the
module that the presets are generated from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spectrum.analysis.runs.schedule import run_schedule
from spectrum.errors import ManifestError
from spectrum.manifest import HubSource, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"pythia": ROOT / "configs" / "pythia.yaml",
           "polypythias": ROOT / "configs" / "polypythias.yaml"}
# the pythia README: steps 0, 1, 2, 4, ..., 512, 1000 and every 1,000 steps to 143,000
DOCUMENTED_STEPS = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512} | set(range(1000, 143_001, 1000))
# Pythia's table of non-embedding parameters (model cards): (layers, d_model, heads) -> count
PUBLISHED = {"70m": ((6, 512, 8), 18_915_328), "160m": ((12, 768, 12), 85_056_000),
             "410m": ((24, 1024, 16), 302_311_424), "1b": ((16, 2048, 8), 805_736_448),
             "1.4b": ((24, 2048, 16), 1_208_602_624), "2.8b": ((32, 2560, 32), 2_517_652_480),
             "6.9b": ((32, 4096, 32), 6_444_163_072), "12b": ((36, 5120, 40), 11_327_027_200)}


def _size(run_name: str) -> str:
    return run_name.removeprefix("pythia-").split("-seed")[0]


#: "lr" of optimizer.params in EleutherAI/pythia's models/*/pythia-<size>.yml
CONFIG_LR = {"14m": 1e-3, "31m": 1e-3, "70m": 1e-3, "160m": 6e-4, "410m": 3e-4, "1b": 2.5e-4,
             "1.4b": 2e-4, "6.9b": 1.2e-4, "12b": 1.2e-4}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load_and_follow_eleutherais_documentation(name):
    manifest = load_manifest(PRESETS[name])
    assert len(DOCUMENTED_STEPS) == 154
    names = [r.name for r in manifest.runs]
    assert len(set(names)) == len(names)
    for run in manifest.runs:
        src = run.checkpoints
        assert isinstance(src, HubSource)
        seed = "" if run.seed == 1234 else f"-seed{run.seed}"
        assert src.repo == f"EleutherAI/pythia-{_size(run.name)}{seed}"
        assert run.name == src.repo.removeprefix("EleutherAI/")
        steps = [int(r.removeprefix("step")) for r in src.revisions]
        assert set(steps) <= DOCUMENTED_STEPS and steps == sorted(steps)
        # 1024 sequences x 2048 tokens per step; 143,000 steps; warmup 1% of them
        assert run.tokens_per_step == 2_097_152
        assert run.tokens == 299_892_736_000 == 143_000 * run.tokens_per_step
        assert run.warmup_steps == 1430
        # by default step 0 and about 30 checkpoints after the warmup; the early ones are
        # listed, one key away
        assert run.steps[0] == 0 and set(run.steps) <= set(steps)
        after = [s for s in run.steps if s > run.warmup_steps]
        assert 28 <= len(after) <= 32 and after[-1] == 143_000
        assert {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000} <= set(steps) - set(run.steps)
        if _size(run.name) in PUBLISHED:
            assert run.params == PUBLISHED[_size(run.name)][1]
        # the learning rate: its configuration's peak after the 1,430-step warmup, a cosine down
        # to min_lr (a tenth of the peak) at step 143,000 (models/<size>/pythia-<size>.yml)
        sched = run_schedule(run)
        peak = CONFIG_LR[_size(run.name)]
        assert sched.lr.max() == pytest.approx(peak) and sched.warmup_steps == 1430
        assert sched.lr[-1] == pytest.approx(peak / 10, rel=1e-3)
        assert sched.lr[72_215] == pytest.approx(peak * 0.55, rel=1e-3)  # halfway down the cosine
    # the largest size is held out (extrapolation)
    largest = max(manifest.runs, key=lambda r: r.params)
    assert largest.role == "heldout"
    # seed replicas at a held-out point: several held-out runs share (M, D, tokens per step)
    points = [r.point for r in manifest.heldout_runs]
    assert max(points.count(p) for p in points) >= 3
    if name == "polypythias":
        assert {_size(r.name) for r in manifest.runs} == {"14m", "31m", "70m", "160m", "410m"}
        assert {r.seed for r in manifest.heldout_runs}.isdisjoint(
            {r.seed for r in manifest.fit_runs})
        assert {r.seed for r in manifest.runs} <= {1234, *range(1, 10)}


def test_one_key_chooses_every_runs_steps(tmp_path):
    """Setting the first run's anchored `steps` to null evaluates every listed revision of
    every run, the early ones included."""
    text = PRESETS["pythia"].read_text()
    first = text.index("steps: &steps [")
    end = text.index("]", first)
    path = tmp_path / "pythia.yaml"
    path.write_text(text[:first] + "steps: &steps null" + text[end + 1:])
    manifest = load_manifest(path)
    assert all(r.steps is None for r in manifest.runs)


def test_presets_are_what_their_generator_writes():
    from spectrum.data.public_suites import PRESETS as GENERATED
    from spectrum.data.public_suites import preset_yaml

    for name, (runs, out, header) in GENERATED.items():
        assert PRESETS[name].read_text() == preset_yaml(runs, out, header)


def _neox_config(layers: int, width: int, heads: int) -> dict:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=50_304, hidden_size=width, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * width,
                         tie_word_embeddings=False).to_dict()


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_params_auto_gives_pythias_published_counts(size, tmp_path):
    from spectrum.data.param_count import count_from

    (layers, width, heads), published = PUBLISHED[size]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_neox_config(layers, width, heads)))
    assert count_from(config) == published


@pytest.mark.parametrize("size", ["70m", "160m", "410m"])
def test_meta_device_count_agrees_with_the_arithmetic(size):
    from spectrum.data.param_count import meta_device_params

    (layers, width, heads), published = PUBLISHED[size]
    assert meta_device_params(_neox_config(layers, width, heads)) == published


def test_convention_on_a_tied_model_with_learned_positions():
    """GPT-2: token and position embeddings and the (tied) output projection are left out."""
    from transformers import GPT2Config

    from spectrum.data.param_count import non_embedding_params

    d, layers = 16, 2
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=d, n_layer=layers, n_head=2)
    # per block: 2 layer norms, c_attn (d x 3d + 3d), c_proj (d x d + d), MLP (d x 4d + 4d,
    # 4d x d + d); then the final layer norm
    per_block = (2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d)
                 + (4 * d * d + 4 * d) + (4 * d * d + d))
    assert non_embedding_params(config.to_dict()) == layers * per_block + 2 * d


def test_params_auto_counts_the_first_checkpoint_of_a_folder_by_hand(tmp_path):
    from transformers import GPTNeoXForCausalLM

    from tests.hub_world import tiny_config

    for step in (20, 10):
        model = GPTNeoXForCausalLM(tiny_config(8, 50))
        model.save_pretrained(tmp_path / "runs" / "r" / f"step{step}")
    # by hand, width 8, 2 layers, MLP 32: per layer 2 norms (2 x 16), attention 4 x 64 + 4 x 8,
    # MLP 2 x 8 x 32 + 32 + 8; then the final norm
    hand = 2 * (32 + (256 + 32) + (512 + 40)) + 16
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    real = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    assert hand == real == 1760
    run = {"name": "r", "params": "auto", "tokens": 1e6, "tokens_per_step": 10, "role": "fit",
           "checkpoints": "runs/r"}
    manifest = parse_manifest({"runs": [run]}, tmp_path / "m.yaml")
    assert manifest.runs[0].params == hand
    first = tmp_path / "runs" / "r" / "step10" / "config.json"
    assert manifest.runs[0].params_counted_from == first

    empty = {**run, "name": "e", "checkpoints": "runs/none"}
    with pytest.raises(ManifestError) as e:
        parse_manifest({"runs": [empty]}, tmp_path / "m.yaml")
    assert len(e.value.problems) == 1
    assert "runs[0] (e).params: auto: cannot count" in e.value.problems[0]


@pytest.mark.slow
@pytest.mark.parametrize("name,runs", [
    ("pythia", {"pythia-14m": 8, "pythia-70m": 16, "pythia-410m": 24}),
    ("polypythias", {"pythia-14m": 8, "pythia-31m": 12, "pythia-70m-seed5": 16,
                     "pythia-70m-seed6": 16})])
def test_reduced_preset_runs_end_to_end_from_an_offline_hub_cache(name, runs, tmp_path,
                                                                   monkeypatch):
    from pipelines.cli import main
    from spectrum.layout import fits_file, loss_shard, scores_file
    from tests.hub_world import STEPS, reduced_preset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = reduced_preset(tmp_path, PRESETS[name], runs)
    assert main(["run", "--config", str(path), "--executor", "local", "--device", "cpu"]) == 0
    manifest = load_manifest(path)
    out = manifest.out
    assert all(loss_shard(out, r, s).is_file() for r in runs for s in STEPS)
    assert all(fits_file(out, r).is_file() for r in runs)
    # params: auto counted each tiny model from the cache: 2 layers of width w, each with two
    # norms (4w), attention (4w^2 + 4w) and an MLP of 4w (8w^2 + 5w), then the final norm (2w)
    counts = {r.name: r.params for r in manifest.runs}
    assert all(counts[r] == 2 * (4 * w + 4 * w * w + 4 * w + 8 * w * w + 5 * w) + 2 * w
               for r, w in runs.items())
    scores = json.loads(scores_file(out).read_text())
    target = scores["tests"]["heldout_runs"]["targets"]["dL/dlnD"]["predictions"]["param_model"]
    assert target["r2"] is None and "data scale" in target["reason"]
    assert yaml.safe_load(path.read_text())["runs"][0]["checkpoints"]["cache_dir"] == "hub"
