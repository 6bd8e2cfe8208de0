"""The fit leaves out the checkpoints that the manifest declares as warmup."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import yaml

from pipelines.cli import main as cli
from spectrum.fit.model import model
from spectrum.layout import fits_file, loss_shard
from spectrum.losses.trajectories import log_tokens
from spectrum.manifest import load_manifest
from spectrum.store import read_provenance, write_parquet

TPS = 1024
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
WARMUP = 4


def test_fit_skips_warmup_checkpoints(tmp_path) -> None:
    (tmp_path / "checkpoints.yaml").write_text(yaml.safe_dump(
        {"out": "artifacts", "runs": [{"name": "a", "params": 1e6, "tokens": 1e9,
                                       "tokens_per_step": TPS, "warmup_steps": WARMUP,
                                       "role": "fit", "checkpoints": "runs/a"}]}))
    manifest = load_manifest(tmp_path / "checkpoints.yaml")
    rng = np.random.default_rng(1)
    n = 40
    x = log_tokens(STEPS[1:], TPS)
    after = np.array(STEPS[1:]) > WARMUP
    truth = np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(3.5, 5, n),
                      rng.uniform(x[after][1], x[-2], n), rng.uniform(1.5, 3, n)], axis=1)
    clean = model(torch.tensor(x), torch.tensor(truth)).numpy()
    # within the warmup the loss is nothing like the sigmoid (a spike, as under a warmup's
    # growing learning rate): a fit that used these points would move far from the truth
    clean[:, ~after] = 12.0
    losses = np.concatenate([np.full((n, 1), 7.0), clean], axis=1).astype(np.float32)
    for j, step in enumerate(STEPS):
        write_parquet(pa.table({"token_idx": pa.array(np.arange(n), pa.int64()),
                                "loss": pa.array(losses[:, j], pa.float32())}),
                      loss_shard(manifest.out, "a", step),
                      {"run": "a", "step": step, "tokens": step * TPS,
                       "checkpoint_hash": f"c{step}", "evalset_hash": "e"})
    assert cli(["fit", "--config", str(tmp_path / "checkpoints.yaml"), "--device", "cpu",
                "--fit-dtype", "float64"]) == 0
    path = fits_file(manifest.out, "a")
    assert read_provenance(path)["steps"] == [s for s in STEPS if s > WARMUP]
    fits = pl.read_parquet(path).sort("token_idx")
    np.testing.assert_allclose(fits["tau"].to_numpy(), truth[:, 2], atol=1e-3)
    np.testing.assert_allclose(fits["hi"].to_numpy(), truth[:, 1], atol=1e-3)
