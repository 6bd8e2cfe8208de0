"""What a manifest will cost, before anything is downloaded or evaluated.

Per run: the checkpoints it names, those already evaluated (a loss shard is present under the
output folder; counted apart and not evaluated again), the token evaluations still to do (tokens
of the evalset x checkpoints), their forward FLOPs, and the storage of their loss shards. Then
the fit work and the GPU time of the losses stage, and, for hub sources, the revisions that are
not in the local Hugging Face cache yet, by name. Nothing is loaded but ``config.json`` files
already on disk; no network.

Estimates, each stated with its basis in the output:

- forward FLOPs per token: ``2 M + 2 V d + 2 L n_ctx d`` (Kaplan et al. 2020: the
  non-embedding matrices, the output projection over the vocabulary V, and attention over the
  context; d the width, L the layers), with V, d, L from the run's cached config.json or, for
  Pythia repositories not yet downloaded, from Pythia's published shapes; ``2 M`` alone where
  neither is known;
- shard storage: :data:`SHARD_BYTES_PER_TOKEN` bytes per token evaluation, as measured;
- fit work: one trajectory per token and run; CPU time at the fit stage's measured rate
  (:data:`FIT_TRAJECTORIES_PER_S` trajectories of 100 checkpoints per second on a 2-core CPU),
  scaled linearly with the checkpoints;
- GPU time of the losses stage: token evaluations / the user's measured ``tokens_per_second``;
  without one, FLOPs / (utilisation x the named GPU's dense bf16 peak).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spectrum.data.checkpoints import resolve_checkpoints, revision_step
from spectrum.errors import SpectrumError
from spectrum.layout import shard_steps
from spectrum.manifest import HubSource, Manifest, RunSpec

PYTHIA_VOCAB = 50_304  # the padded vocabulary of Pythia's configs (the largest pad a little more)
SHARD_BYTES_PER_TOKEN = 3.4  # zstd, delta-packed indices, byte-stream-split float32 losses
FIT_TRAJECTORIES_PER_S = 48_000  # the fit stage at 8M tokens x 100 checkpoints, 2-core CPU
FIT_REFERENCE_CHECKPOINTS = 100
# dense bf16 tensor-core peaks, FLOP/s (vendor data sheets, without sparsity)
GPU_PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "l40s": 362e12,
                  "l4": 121e12}


@dataclass(frozen=True)
class RunPlan:
    run: RunSpec
    checkpoints: int  # chosen checkpoints
    evaluated: int  # of them, with a loss shard present
    missing: tuple[str, ...]  # hub revisions not in the local cache, or a folder problem
    flops_per_token: float
    flops_basis: str  # "config.json", "Pythia's published shape" or "2M only"
    weights: float  # parameters of one checkpoint (M + 2 V d; M where the shape is unknown)

    @property
    def to_evaluate(self) -> int:
        return self.checkpoints - self.evaluated


@dataclass(frozen=True)
class Plan:
    runs: tuple[RunPlan, ...]
    tokens: int  # contextualized tokens of the evalset (per checkpoint)
    context: int


def _chosen_steps(run: RunSpec) -> list[tuple[int, str | None]]:
    """(step, hub revision or None) of every checkpoint the run will read; offline."""
    src = run.checkpoints
    wanted = set(run.steps) if run.steps is not None else None
    if isinstance(src, HubSource):
        out = []
        for rev in src.revisions:
            step = revision_step(rev)
            if step is not None and (wanted is None or step in wanted):
                out.append((step, rev))
        return sorted(out)
    try:
        return [(c.step, None) for c in resolve_checkpoints(run)]
    except SpectrumError:
        return []


def _missing(run: RunSpec, chosen: list[tuple[int, str | None]]) -> tuple[str, ...]:
    src = run.checkpoints
    if not isinstance(src, HubSource):
        if not Path(src).is_dir():
            return (f"folder {src} does not exist",)
        return () if chosen else (f"folder {src} holds no checkpoints",)
    from huggingface_hub import try_to_load_from_cache

    cache = str(src.cache_dir) if src.cache_dir else None
    return tuple(rev for _, rev in chosen
                 if not isinstance(try_to_load_from_cache(src.repo, "config.json", revision=rev,
                                                          cache_dir=cache), str))


def _shape(run: RunSpec) -> tuple[tuple[int, int, int] | None, str]:
    """(layers, width, vocabulary) of the run's model and where they come from."""
    from spectrum.data.param_count import CountError, first_config
    from spectrum.data.public_suites import SIZES

    try:
        config = json.loads(first_config(run.checkpoints, run.steps).read_text())
        return ((int(config["num_hidden_layers"]), int(config["hidden_size"]),
                 int(config["vocab_size"])), "config.json")
    except (CountError, OSError, ValueError, KeyError, TypeError):
        pass
    src = run.checkpoints
    if isinstance(src, HubSource) and src.repo.startswith("EleutherAI/pythia-"):
        size = src.repo.removeprefix("EleutherAI/pythia-").split("-seed")[0]
        if size in SIZES:
            return ((SIZES[size].layers, SIZES[size].width, PYTHIA_VOCAB),
                    "Pythia's published shape")
    return None, "2M only"


def flops_per_token(params: float, shape: tuple[int, int, int] | None, context: int) -> float:
    """Forward FLOPs per evaluated token (see the module doc)."""
    if shape is None:
        return 2.0 * params
    layers, width, vocab = shape
    return 2.0 * params + 2.0 * vocab * width + 2.0 * layers * context * width


def make_plan(manifest: Manifest) -> Plan:
    """The plan of every run of ``manifest`` (offline; reads only what is on disk)."""
    ev = manifest.evalset
    tokens = ev.sequences * (ev.context - 1)
    runs = []
    for run in manifest.runs:
        chosen = _chosen_steps(run)
        present = set(shard_steps(manifest.out, run.name))
        shape, basis = _shape(run)
        weights = run.params + (2.0 * shape[1] * shape[2] if shape else 0.0)
        runs.append(RunPlan(run, len(chosen), sum(s in present for s, _ in chosen),
                            _missing(run, chosen), flops_per_token(run.params, shape, ev.context),
                            basis, weights))
    return Plan(tuple(runs), tokens, ev.context)


def _si(x: float, unit: str = "") -> str:
    """1.23e15 -> '1.23 P' (SI prefixes, three significant digits)."""
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                           (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 360 else f"{seconds / 60:,.1f} min"


def _missing_cell(rp: RunPlan) -> str:
    if not rp.missing:
        return "0"
    if not isinstance(rp.run.checkpoints, HubSource):
        return "no folder" if "does not exist" in rp.missing[0] else "none yet"
    return f"{len(rp.missing)}" if len(rp.missing) < rp.checkpoints else f"all {len(rp.missing)}"


def format_table(plan: Plan) -> list[str]:
    """The per-run table (Markdown) and its totals."""
    n = plan.tokens
    lines = ["| run | role | M | checkpoints | evaluated | missing | token evaluations "
             "| forward FLOPs | shard storage |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rp in plan.runs:
        evals = rp.to_evaluate * n
        lines.append(f"| {rp.run.name} | {rp.run.role} | {_si(rp.run.params)} | "
                     f"{rp.checkpoints} | {rp.evaluated} | {_missing_cell(rp)} | {_si(evals)} | "
                     f"{_si(evals * rp.flops_per_token)} | "
                     f"{_si(evals * SHARD_BYTES_PER_TOKEN, 'B')} |")
    ck = sum(rp.checkpoints for rp in plan.runs)
    done = sum(rp.evaluated for rp in plan.runs)
    missing = sum(len(rp.missing) for rp in plan.runs
                  if isinstance(rp.run.checkpoints, HubSource))
    evals = sum(rp.to_evaluate for rp in plan.runs) * n
    flops = sum(rp.to_evaluate * n * rp.flops_per_token for rp in plan.runs)
    lines.append(f"| **{len(plan.runs)} runs** | | | {ck} | {done} | {missing} | "
                 f"{_si(evals)} | {_si(flops)} | {_si(evals * SHARD_BYTES_PER_TOKEN, 'B')} |")
    return lines


def gpu_time_line(plan: Plan, tokens_per_second: float | None, gpu: str,
                  utilisation: float) -> str:
    """The estimated GPU time of the losses stage, with its basis."""
    evals = sum(rp.to_evaluate for rp in plan.runs) * plan.tokens
    if tokens_per_second:
        return (f"losses stage: {_hours(evals / tokens_per_second)} of GPU time at the "
                f"{tokens_per_second:,.0f} tokens/s given")
    flops = sum(rp.to_evaluate * plan.tokens * rp.flops_per_token for rp in plan.runs)
    seconds = flops / (utilisation * GPU_PEAK_FLOPS[gpu])
    return (f"losses stage: about {_hours(seconds)} of {gpu.upper()} time, estimated from the "
            f"FLOPs at {utilisation:.0%} of its dense bf16 peak "
            f"({_si(GPU_PEAK_FLOPS[gpu], 'FLOP/s')}); "
            "no GPU throughput has been measured yet: measure one on a few checkpoints and "
            "give it as --tokens-per-second")


def download_line(runs: tuple[RunPlan, ...]) -> str:
    """The weights of the revisions not in the cache yet."""
    hub = [rp for rp in runs if isinstance(rp.run.checkpoints, HubSource)]
    n = sum(len(rp.missing) for rp in hub)
    params = sum(len(rp.missing) * rp.weights for rp in hub)
    return (f"to download: {n} revisions, {_si(params)} parameters in all (x 2 bytes in 16-bit "
            f"weights: {_si(2 * params, 'B')}; x 4 in 32-bit)")


def format_plan(plan: Plan, tokens_per_second: float | None = None, gpu: str = "h100",
                utilisation: float = 0.3) -> str:
    """The plan as printed by ``spectrum plan``."""
    runs = plan.runs
    trajectories = len(runs) * plan.tokens
    points = sum(rp.checkpoints for rp in runs) * plan.tokens
    mean_k = points / max(1, trajectories)
    fit_s = trajectories / FIT_TRAJECTORIES_PER_S * mean_k / FIT_REFERENCE_CHECKPOINTS
    bases = sorted({rp.flops_basis for rp in runs})
    lines = [f"evalset: {plan.tokens:,} tokens per checkpoint (sequences x (context - 1), "
             f"context {plan.context})", ""]
    lines += format_table(plan)
    lines += ["",
              f"forward FLOPs per token: 2M + 2Vd + 2 L n_ctx d (shapes from: {', '.join(bases)});"
              f" shard storage at {SHARD_BYTES_PER_TOKEN} bytes per token evaluation",
              download_line(runs),
              gpu_time_line(plan, tokens_per_second, gpu, utilisation),
              f"fit: {_si(trajectories)} trajectories of {mean_k:.0f} checkpoints on average, "
              "about "
              f"{_hours(fit_s)} on a 2-core CPU at the fit stage's measured "
              f"{FIT_TRAJECTORIES_PER_S:,} trajectories/s of {FIT_REFERENCE_CHECKPOINTS} "
              "checkpoints (it scales with cores; a GPU fits faster)"]
    lines += missing_lines(runs)
    return "\n".join(lines)


def missing_lines(runs: tuple[RunPlan, ...]) -> list[str]:
    """The revisions not in the local cache, by name (runs missing the same revisions share a
    line), and the checkpoint folders that are missing or empty."""
    groups: dict[tuple[str, ...], list[str]] = {}
    folders = []
    for rp in runs:
        src = rp.run.checkpoints
        if rp.missing and isinstance(src, HubSource):
            groups.setdefault(rp.missing, []).append(src.repo)
        elif rp.missing:
            folders.append(f"  {rp.run.name}: {rp.missing[0]}")
    lines = []
    if groups:
        lines += ["", "not in the local Hugging Face cache (download them before `spectrum run`):"]
        for missing, repos in groups.items():
            lines += [f"  {', '.join(missing)}", f"    of {', '.join(repos)}"]
    if folders:
        lines += ["", "checkpoint folders without checkpoints (the built-in suite's are written "
                      "by `spectrum suite`):", *folders]
    return lines
