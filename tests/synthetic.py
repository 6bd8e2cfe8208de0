"""Synthetic artifacts with a known truth, in the layout :mod:`spectrum.layout` defines.

Every token follows a sigmoid in ln T whose midpoint moves with ln M and ln D by planted slopes
(``TAU_SLOPE_M``, ``TAU_SLOPE_D``), frequent targets are learned earlier than rare ones
(``FREQ_SHIFT`` per unit of log frequency), and some tokens are flat. The fits written are the true
parameters (with the kinds a fitter would assign), so the stages downstream of the fit can be tested
against the truth without a fitter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from spectrum.store import write_parquet

TAU_SLOPE_M = -0.6
TAU_SLOPE_D = 0.3
FREQ_SHIFT = -0.5
LN_M0, LN_D0 = np.log(3e5), np.log(3e6)

# name, M, D, role, seed
DEFAULT_RUNS = (
    ("m1-d1", 1e5, 1e6, "fit", 0),
    ("m1-d3", 1e5, 1e7, "fit", 0),
    ("m3-d1", 1e6, 1e6, "fit", 0),
    ("m3-d3", 1e6, 1e7, "fit", 0),
    ("m1-d1-s1", 1e5, 1e6, "fit", 1),
    ("m2-d2", 3e5, 3e6, "heldout", 0),
)
TOKENS_PER_STEP = 1000


def token_truth(n_seq: int, context: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-token annotations and the run-independent parts of the truth."""
    rng = np.random.default_rng(seed)
    n = n_seq * context
    log_freq = rng.normal(-8.0, 1.5, n)
    base_tau = rng.normal(10.5, 0.9, n) + FREQ_SHIFT * (log_freq + 8.0)
    delta = rng.gamma(4.0, 0.6, n)
    flat = rng.random(n) < 0.1
    delta[flat] = 0.0
    return {
        "token_idx": np.arange(n, dtype=np.int64),
        "seq_id": np.repeat(np.arange(n_seq, dtype=np.int32), context),
        "pos": np.tile(np.arange(context, dtype=np.int32), n_seq),
        "target_id": rng.integers(0, 500, n).astype(np.int32),
        "doc_id": np.repeat(np.arange(n_seq, dtype=np.int32) // 2, context),
        "target_freq": np.exp(log_freq),
        "word_start": rng.random(n) < 0.4,
        "base_tau": base_tau, "delta": delta, "flat": flat,
        "lo": rng.uniform(0.5, 2.5, n), "k": np.exp(rng.normal(np.log(3.0), 0.3, n)),
        "noise_tau": rng.normal(0, 0.1, n),
    }


def run_truth(truth: dict[str, np.ndarray], M: float, D: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    tau = (truth["base_tau"] + TAU_SLOPE_M * (np.log(M) - LN_M0) + TAU_SLOPE_D * (np.log(D) - LN_D0)
           + rng.normal(0, 0.05, truth["base_tau"].size))
    lo = truth["lo"] - 0.1 * (np.log(M) - LN_M0)
    return {"lo": lo, "hi": lo + truth["delta"], "tau": tau, "k": truth["k"]}


def make_synthetic_artifacts(root: Path, *, n_seq: int = 32, context: int = 32, seed: int = 0,
                             runs=DEFAULT_RUNS, n_steps: int = 24, noise: float = 0.05,
                             with_fits: bool = True) -> Path:
    """Write evalset/tokens.parquet, losses shards, fits and a manifest under ``root``;
    returns the manifest's path (its ``out`` is ``root/artifacts``)."""
    root = Path(root)
    out = root / "artifacts"
    truth = token_truth(n_seq, context, seed)
    cols = ("token_idx", "seq_id", "pos", "target_id", "doc_id", "target_freq", "word_start")
    write_parquet(pa.table({c: truth[c] for c in cols}), out / "evalset" / "tokens.parquet")
    rng = np.random.default_rng(seed + 7)
    manifest_runs = []
    for name, M, D, role, rseed in runs:
        last = int(D // TOKENS_PER_STEP)
        steps = np.unique(np.round(np.logspace(0, np.log10(last), n_steps)).astype(int))
        steps = np.concatenate([[0], steps])
        p = run_truth(truth, M, D, rseed)
        for s in steps:
            x = np.log(max(s, 0.5) * TOKENS_PER_STEP)
            loss = p["lo"] + (p["hi"] - p["lo"]) / (1 + np.exp(p["k"] * (x - p["tau"])))
            loss = loss + rng.normal(0, noise, loss.size)
            write_parquet(pa.table({"token_idx": truth["token_idx"],
                                    "loss": loss.astype(np.float32)}),
                          out / "losses" / f"run={name}" / f"step={s}" / "part-0.parquet")
        if with_fits:
            x_min, x_max = np.log(steps[1] * TOKENS_PER_STEP), np.log(last * TOKENS_PER_STEP)
            kind = np.where(truth["flat"], "flat",
                            np.where(p["tau"] > x_max, "unfinished",
                                     np.where(p["tau"] < x_min, "learned", "learned")))
            n = kind.size
            fits = {"token_idx": truth["token_idx"], **p,
                    **{f"{q}_se": np.full(n, 0.05) for q in ("lo", "hi", "tau", "k")},
                    "rss": np.full(n, noise ** 2 * len(steps)), "r2": rng.uniform(0.8, 1.0, n),
                    "n_iter": np.full(n, 10, np.int32), "status": np.full(n, "converged"),
                    "kind": kind}
            write_parquet(pa.table(fits), out / "fits" / f"run={name}" / "part-0.parquet")
        manifest_runs.append({"name": name, "params": M, "tokens": D,
                              "tokens_per_step": TOKENS_PER_STEP, "role": role,
                              "checkpoints": f"runs/{name}"})
    manifest = {"out": "artifacts", "evalset": {"sequences": n_seq, "context": context},
                "runs": manifest_runs}
    path = root / "checkpoints.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# planted worlds in the shape of a scaling suite, written as loss shards only (no fits), to be run
# through `spectrum fit` and `spectrum report`

# sizes m1 < ... < m5 and data scales d1 < d2 < d3 (tokens); fit: m1, m2, m4 at every D; held out:
# m3 (between two fit sizes: interpolation) and m5 (the largest: extrapolation) at every D, and
# two seed replicas of m5-d2
SIZES = {"m1": 1e5, "m2": 3e5, "m3": 1e6, "m4": 3e6, "m5": 1e7}
SCALES = {"d1": 2e5, "d2": 1e6, "d3": 5e6}  # the shorter runs end in the tails of late steps
SUITE_RUNS = tuple(
    [(f"{m}-{d}", SIZES[m], SCALES[d], "fit", 0) for m in ("m1", "m2", "m4") for d in SCALES]
    + [(f"{m}-{d}", SIZES[m], SCALES[d], "heldout", 0) for m in ("m3", "m5") for d in SCALES]
    + [(f"m5-d2-s{s}", SIZES["m5"], SCALES["d2"], "heldout", s) for s in (1, 2)])
WORLD_M0, WORLD_D0 = np.log(1e6), np.log(1e6)
# the planted laws of the step world: per unit ln M and ln D
WORLD_TAU_M, WORLD_TAU_D, WORLD_LO_M, WORLD_LO_D = -0.3, 0.2, -0.1, -0.05


def world_truth(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Run-independent per-token truth of the planted worlds."""
    rng = np.random.default_rng(seed + 11)
    return {"tau": rng.normal(10.8, 0.6, n), "tau_m": WORLD_TAU_M + rng.normal(0, 0.1, n),
            "tau_d": WORLD_TAU_D + rng.normal(0, 0.05, n), "lo": rng.uniform(0.5, 2.5, n),
            "delta": 0.3 + rng.gamma(4.0, 0.5, n), "k": np.exp(rng.normal(np.log(2.0), 0.2, n)),
            "beta": rng.uniform(0.15, 0.5, n), "amp": 0.5 + rng.gamma(3.0, 0.5, n)}


def world_curves(world: str, t: dict[str, np.ndarray], M: float, D: float, role: str,
                 x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, K) noiseless losses of every token of one run.

    ``step``: sigmoids whose tau and lo move with ln M and ln D by the planted laws; ``smooth``:
    per-token power laws in T whose level moves with ln M and ln D; ``other_law``: the step world,
    but the held-out runs follow the opposite laws (the fit runs cannot tell them)."""
    dm, dd = np.log(M) - WORLD_M0, np.log(D) - WORLD_D0
    sign = -1.0 if (world == "other_law" and role == "heldout") else 1.0
    lo = t["lo"] + sign * (WORLD_LO_M * dm + WORLD_LO_D * dd)
    if world == "smooth":
        return (lo[:, None] + t["amp"][:, None]
                * np.exp(-t["beta"][:, None] * (x[None, :] - np.log(1000.0))))
    tau = t["tau"] + sign * (t["tau_m"] * dm + t["tau_d"] * dd) + rng.normal(0, 0.03, len(lo))
    return lo[:, None] + t["delta"][:, None] / (1 + np.exp(t["k"][:, None] * (x[None, :] - tau[:, None])))


def make_world(root: Path, world: str = "step", *, n_seq: int = 16, context: int = 32,
               n_steps: int = 16, noise: float = 0.05, runs=SUITE_RUNS, warmup_steps: int = 2,
               seed: int = 0) -> Path:
    """Write the evalset's tokens, every run's loss shards and a manifest for a planted world;
    returns the manifest's path. Fit it with `spectrum fit`, then `spectrum report`."""
    root = Path(root)
    out = root / "artifacts"
    annotations = token_truth(n_seq, context, seed)
    cols = ("token_idx", "seq_id", "pos", "target_id", "doc_id", "target_freq", "word_start")
    write_parquet(pa.table({c: annotations[c] for c in cols}), out / "evalset" / "tokens.parquet")
    truth = world_truth(n_seq * context, seed)
    entries = []
    for name, M, D, role, rseed in runs:
        rng = np.random.default_rng(seed * 1000 + rseed * 100 + int(np.log(M) * 7 + np.log(D)))
        last = int(D // TOKENS_PER_STEP)
        steps = np.unique(np.round(np.logspace(0, np.log10(last), n_steps)).astype(int))
        x = np.log(steps * TOKENS_PER_STEP)
        loss = world_curves(world, truth, M, D, role, x, rng)
        loss = loss + rng.normal(0, noise, loss.shape)
        for j, s in enumerate(steps):
            write_parquet(pa.table({"token_idx": annotations["token_idx"],
                                    "loss": loss[:, j].astype(np.float32)}),
                          out / "losses" / f"run={name}" / f"step={s}" / "part-0.parquet")
        entries.append({"name": name, "params": M, "tokens": D, "tokens_per_step": TOKENS_PER_STEP,
                        "role": role, "warmup_steps": warmup_steps, "checkpoints": f"runs/{name}"})
    path = root / "checkpoints.yaml"
    path.write_text(yaml.safe_dump({"out": "artifacts", "evalset": {"sequences": n_seq,
                                                                   "context": context},
                                    "runs": entries}, sort_keys=False))
    return path
