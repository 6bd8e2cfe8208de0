"""Where the curriculum's shed per phase comes from: the sigmoid as fitted against what was measured.

Reads the learnability sample of ``spectrum export-curriculum`` (``<out>/curriculum/learnability``,
after the command has run) and, for the target run's phases, computes every sequence's shed per
phase two ways:

- ``fitted``: the loss each token's fitted sigmoid sheds from its upper asymptote ``hi`` (the
  sigmoid as fitted, the asymptote included);
- ``measured``: what the export uses: the curve starts at the token's measured loss at the run's
  first checkpoint, is read from the first fitted checkpoint on and never exceeds its start
  (:func:`spectrum.curriculum.weights.token_phase_shed`).

Prints, per rule: the share of usable tokens whose fitted drop ``hi - lo`` exceeds their measured
initial loss and their share of the phase-0 signal, the largest mean shed per token of any sequence
in any phase against ln V, the mean phase-0 shed, and the Spearman correlation of the two rules'
phase-0 weights.

    python benchmarks/curriculum_shed_audit.py --config checkpoints.yaml --target-steps 128
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from spectrum import layout
from spectrum.curriculum.learnability import (first_fitted_x, initial_losses, learnability_manifest,
                                              learnability_runs, read_fits)
from spectrum.curriculum.weights import USABLE_KINDS, phase_schedule, phase_weights, token_shed
from spectrum.manifest import load_manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="checkpoints.yaml")
    p.add_argument("--target-steps", type=int, default=128)
    p.add_argument("--phases", type=int, default=4)
    args = p.parse_args()
    manifest = load_manifest(args.config)
    runs = learnability_runs(manifest, None)
    lm = learnability_manifest(manifest, runs, layout.learnability_dir(manifest.out))
    first = runs[0]
    phases = phase_schedule(args.target_steps, first.tokens_per_step, args.phases,
                            first_step=max(first.warmup_steps, 1))
    tokens = pl.read_parquet(layout.evalset_tokens(lm.out), columns=["token_idx", "seq_id", "doc_id"])
    fits, initial = read_fits(lm), initial_losses(lm)
    ln_v = math.log(json.loads(layout.evalset_meta(lm.out).read_text())["tokenizer"]["vocab_size"])
    rules = {"fitted": token_shed(tokens, fits, phases),
             "measured": token_shed(tokens, fits, phases, x_first=first_fitted_x(lm), initial=initial)}
    over = _over_initial(tokens, fits, initial)
    out = {"runs": [r.name for r in runs], "phases": list(phases.step_edges), "ln_vocab": ln_v,
           "tokens_with_fitted_drop_above_initial_loss": float(over.mean())}
    weights = {}
    for name, per_token in rules.items():
        s0 = per_token["s0"].to_numpy()
        seq = per_token.group_by("seq_id").agg([pl.col(f"s{q}").mean() for q in range(phases.n)])
        shed = seq.sort("seq_id").drop("seq_id").to_numpy()
        weights[name] = phase_weights(shed)[:, 0]
        out[name] = {"phase0_signal_share_from_those_tokens": float(s0[over].sum() / s0.sum()),
                     "mean_phase0_shed": float(shed[:, 0].mean()),
                     "largest_sequence_mean_shed": float(shed.max()),
                     "largest_phase": int(np.unravel_index(shed.argmax(), shed.shape)[1])}
    out["spearman_phase0_weights"] = float(spearmanr(weights["fitted"], weights["measured"])[0])
    print(json.dumps(out, indent=2))


def _over_initial(tokens: pl.DataFrame, fits: dict[str, pl.DataFrame],
                  initial: dict[str, pl.DataFrame]) -> np.ndarray:
    """Per token (in token_idx order), averaged over runs: whether its usable fit's drop
    ``hi - lo`` exceeds its measured initial loss in the run (as a fraction of runs > 0.5)."""
    t = tokens.select("token_idx").sort("token_idx")
    votes = np.zeros(t.height)
    for run, f in fits.items():
        j = t.join(f, on="token_idx", how="left", maintain_order="left").join(
            initial[run], on="token_idx", how="left", maintain_order="left")
        usable = j["kind"].is_in(list(USABLE_KINDS)).fill_null(False).to_numpy()
        drop = (j["hi"] - j["lo"]).to_numpy()
        votes += usable & (drop > j["loss"].to_numpy())
    return votes / len(fits) > 0.5


if __name__ == "__main__":
    main()
