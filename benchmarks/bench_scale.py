"""The fit and report stages at scale: wall time and peak memory on synthetic loss shards.

Writes N tokens x K checkpoints x R runs of loss shards exactly as the losses stage writes them
(``write_loss_shard``: ``token_idx`` 0..N-1 sorted, ``loss`` float32, zstd, with provenance and
content checksum), each token a planted sigmoid step in ``ln T`` (60% learned, 10% forgotten, 30%
flat) plus Gaussian noise, and an evaluation set of 128-token sequences; then runs ``spectrum fit``
and ``spectrum report`` as separate processes and records each one's wall time and peak resident
memory (``wait4``; for a command that starts Ray, its workers are not counted). The peer, timed in
the same run on the same data: ``fit_sigmoids`` alone on the first run's trajectories already in
memory, warm (a first call compiles), with the same torch threads, once before the stage and once
after (its rate moves by 10-15% between minutes on a shared machine; the two are averaged).
``--code DIR`` runs the stages from another checkout (a before/after comparison in one run).
``read`` times the reading side alone: the first run's shards read into (tokens x checkpoints)
chunks by ``--code``'s reader.

    python benchmarks/bench_scale.py --tokens 250000 1000000 --checkpoints 100 --runs 2
    python benchmarks/bench_scale.py --tokens 1000000 --code /tmp/before --skip-peer

The projection to the paper's scale (1e7 tokens x 150 checkpoints x 110 runs) scales the fit
stage's measured seconds per (token x checkpoint) linearly, on this machine and on a Ray cluster
of ``--cluster-cores`` cores (units are (run, 1M-token chunk): 1,100 of them at that scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectrum.layout import evalset_tokens, loss_shard  # noqa: E402
from spectrum.losses.shards import CHECKSUM, ENCODINGS, write_loss_shard  # noqa: E402
from spectrum.store import read_provenance, write_parquet  # noqa: E402

TOKENS_PER_STEP = 2_097_152
CONTEXT = 128
PAPER = {"tokens": 10_000_000, "checkpoints": 150, "runs": 110}


def checkpoint_steps(k: int) -> list[int]:
    """Step 0 and k - 1 distinct steps log-spaced over 1..143,000 (Pythia's range)."""
    m = k - 1
    while len(steps := np.unique(np.geomspace(1, 143_000, m).round().astype(int))) < k - 1:
        m += 1
    return [0] + steps[np.linspace(0, len(steps) - 1, k - 1).round().astype(int)].tolist()


def planted(n: int, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) parameters lo, hi, tau, k of the mix of learned, forgotten and flat tokens."""
    kind = rng.choice(3, size=n, p=[0.6, 0.1, 0.3])
    lo = rng.uniform(0.3, 3.0, n)
    delta = np.select([kind == 0, kind == 1], [rng.uniform(0.2, 5.0, n),
                                               -rng.uniform(0.2, 2.0, n)], 0.0)
    tau = rng.uniform(x[0] + 0.05 * (x[-1] - x[0]), x[-1], n)
    return np.stack([lo, lo + delta, tau, np.exp(rng.uniform(np.log(0.5), np.log(8.0), n))], 1)


def _as_written_now(shard: Path) -> bool:
    """Whether a world's shard was written as the losses stage writes them now (checksum,
    encodings): a world written otherwise is written again."""
    try:
        meta = pq.read_metadata(shard)
    except (OSError, pa.ArrowInvalid):
        return False
    names = meta.schema.to_arrow_schema().names
    encodings = {names[c]: meta.row_group(0).column(c).encodings for c in range(len(names))}
    return (CHECKSUM in (read_provenance(shard) or {})
            and all(e in encodings.get(c, ()) for c, e in ENCODINGS.items()))


def write_world(folder: Path, n: int, k: int, runs: int, noise: float, seed: int = 0) -> Path:
    """Shards, evalset tokens and a manifest; returns the manifest path (reused if present)."""
    manifest = folder / "checkpoints.yaml"
    out = folder / "artifacts"
    steps = checkpoint_steps(k)
    if manifest.is_file() and _as_written_now(loss_shard(out, "r0", steps[-1])):
        return manifest
    x = np.log(np.maximum(steps, 1) * float(TOKENS_PER_STEP))
    tok = np.arange(n, dtype=np.int64)
    write_parquet(pa.table({"token_idx": tok, "seq_id": tok // CONTEXT, "pos": tok % CONTEXT,
                            "target_id": (tok * 7919) % 50_000, "doc_id": tok // (4 * CONTEXT)}),
                  evalset_tokens(out), {"stage": "synthetic"})
    entries = []
    for r in range(runs):
        name = f"r{r}"
        rng = np.random.default_rng(seed + r)
        p = planted(n, x[1:], rng)
        for j, step in enumerate(steps):
            s = 1 / (1 + np.exp(p[:, 3] * (x[j] - p[:, 2]))) if step else np.ones(n)
            loss = (p[:, 0] + (p[:, 1] - p[:, 0]) * s
                    + noise * rng.standard_normal(n)).astype(np.float32)
            write_loss_shard(loss_shard(out, name, step), loss,
                             {"run": name, "step": step, "tokens": step * TOKENS_PER_STEP,
                              "checkpoint_hash": f"synthetic-{seed}-{r}-{step}",
                              "evalset_hash": "synthetic", "dtype": "float32"})
        entries.append({"name": name, "params": 1e7 * 2 ** r, "tokens": 3e11,
                        "tokens_per_step": TOKENS_PER_STEP, "role": "fit",
                        "checkpoints": f"runs/{name}"})
    manifest.write_text(yaml.safe_dump({"out": "artifacts", "runs": entries}, sort_keys=False))
    return manifest


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (GB) and the load average before and after."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {status}); see {log}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
            "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}


READ = """
import json, sys, time
from spectrum.losses.trajectories import iter_trajectories
from spectrum.manifest import load_manifest
m = load_manifest(sys.argv[1]); run = m.runs[0]
t0 = time.perf_counter(); n = 0
for chunk in iter_trajectories(m.out, run.name, chunk_size=int(sys.argv[2])):
    n += chunk.losses.size
print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "values": n}))
"""


def read_rate(manifest: Path, env: dict[str, str], chunk: int) -> dict:
    """The shards of the first run read into (tokens x checkpoints) chunks, nothing else: the
    reading side of the fit stage, in a process of its own (``--code``'s reader)."""
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", READ, str(manifest), str(chunk)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    r = json.loads(out[-1])
    return {**r, "values_per_s": round(r["values"] / r["seconds"]), "load": round(load, 1)}


def peer_rate(manifest: Path, max_tokens: int) -> dict:
    """fit_sigmoids alone, warm, on the first run's first ``max_tokens`` trajectories."""
    from spectrum.fit.runs import fit_steps
    from spectrum.fit.solver import fit_sigmoids
    from spectrum.losses.trajectories import load_losses, log_tokens
    from spectrum.manifest import load_manifest

    m = load_manifest(manifest)
    run = m.runs[0]
    steps = fit_steps(m.out, run)
    x = log_tokens(steps, run.tokens_per_step)
    y = load_losses(m.out, run.name, steps=steps, token_range=(0, max_tokens)).losses
    t0 = time.perf_counter()
    fit_sigmoids(y, x, device="cpu")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_sigmoids(y, x, device="cpu")
    warm = time.perf_counter() - t0
    return {"tokens": len(y), "first_call_s": round(first, 1), "warm_s": round(warm, 1),
            "warm_tok_per_s": round(len(y) / warm), "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--checkpoints", type=int, default=100, help="K, step 0 included")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--work", default="/tmp/bench_scale", help="where the shards are written")
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose stages are timed")
    ap.add_argument("--chunk-size", type=int, default=1 << 20, help="of the read measurement")
    ap.add_argument("--skip-report", action="store_true")
    ap.add_argument("--read-only", action="store_true", help="only the read measurement")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--peer-tokens", type=int, default=1 << 20)
    ap.add_argument("--fit-args", default="--device cpu", help="extra options of spectrum fit")
    ap.add_argument("--cluster-cores", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve())}
    rows = []
    for n in args.tokens:
        folder = Path(args.work) / f"n{n}-k{args.checkpoints}-r{args.runs}"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        manifest = write_world(folder, n, args.checkpoints, args.runs, args.noise)
        row = {"tokens": n, "checkpoints": args.checkpoints, "runs": args.runs,
               "code": str(args.code), "write_s": round(time.perf_counter() - t0, 1)}
        row["read"] = read_rate(manifest, env, args.chunk_size)
        if args.read_only:
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        base = [sys.executable, "-m", "pipelines.cli"]
        peers = [] if args.skip_peer else [peer_rate(manifest, args.peer_tokens)]
        row["fit"] = timed(base + ["fit", "--config", str(manifest), "--force",
                                   *args.fit_args.split()], env, folder / "fit.log")
        row["fit"]["tok_per_s"] = round(n * args.runs / row["fit"]["wall_s"])
        if not args.skip_report:
            row["report"] = timed(base + ["report", "--config", str(manifest), "--force"], env,
                                  folder / "report.log")
        if not args.skip_peer:
            peers.append(peer_rate(manifest, args.peer_tokens))
            rate = round(float(np.mean([p["warm_tok_per_s"] for p in peers])))
            row["peer"] = {"before_stage": peers[0], "after_stage": peers[1],
                           "warm_tok_per_s": rate}
            row["fit_share_of_peer"] = round(row["fit"]["tok_per_s"] / rate, 3)
        per = row["fit"]["wall_s"] / (n * args.runs * (args.checkpoints - 1))
        total = per * PAPER["tokens"] * PAPER["runs"] * (PAPER["checkpoints"] - 1)
        cores = os.cpu_count() or 1
        row["projection_fit_hours"] = {"this_machine": round(total / 3600, 1),
                                       f"ray_{args.cluster_cores}_cores":
                                           round(total * cores / args.cluster_cores / 3600, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
