"""Per-token loss throughput: the evaluator against its peers, in one process.

Methods, on the same random-weight GPT-NeoX model and the same random token ids:

- ``straightforward``: what lm-evaluation-harness does: fp32 model, the full logits of a batch,
  ``log_softmax`` and ``gather`` (batch size halved on out-of-memory);
- ``evaluator``: :class:`spectrum.losses.evaluator.Evaluator` as the losses stage runs it (bf16 on GPU,
  fp32 on CPU; chunked, compiled cross-entropy; automatic batch size);
- ``bare forward``: the model body and the output projection in the evaluator's dtype, at the
  evaluator's batch size, with nothing computed from the logits: the unavoidable work.

Modes:

- ``gpu``: Pythia-160M and Pythia-1.4B shapes at context 2048;
- ``sweep``: ``--checkpoints`` (20) saved checkpoints evaluated by the losses stage's worker (next
  checkpoint loaded in a background thread): wall time against the sum of pure evaluation times;
- ``cpu``: small shapes that run on a laptop CPU, and a CPU sweep.

    python benchmarks/bench_losses.py --mode cpu
    python benchmarks/bench_losses.py --mode gpu
    python benchmarks/bench_losses.py --mode sweep
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from spectrum.losses.evaluator import Evaluator, body_and_head


@dataclass(frozen=True)
class Shape:
    name: str
    width: int
    layers: int
    heads: int
    vocab: int
    context: int
    sequences: int

    def config(self) -> GPTNeoXConfig:
        return GPTNeoXConfig(vocab_size=self.vocab, hidden_size=self.width,
                             num_hidden_layers=self.layers, num_attention_heads=self.heads,
                             intermediate_size=4 * self.width,
                             max_position_embeddings=self.context, tie_word_embeddings=False)


GPU_SHAPES = [Shape("pythia-160m", 768, 12, 12, 50304, 2048, 64),
              Shape("pythia-1.4b", 2048, 24, 16, 50304, 2048, 32)]
CPU_SHAPES = [Shape("suite-small (w64 l2)", 64, 2, 2, 2048, 128, 256),
              Shape("suite-large (w128 l4)", 128, 4, 4, 2048, 128, 256),
              Shape("w256 l4 v8192", 256, 4, 4, 8192, 256, 32)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def straightforward(model, ids: torch.Tensor, batch: int) -> tuple[np.ndarray, int]:
    """fp32 full logits, log_softmax, gather; halves the batch on out-of-memory."""
    while True:
        try:
            out = []
            for i in range(0, ids.shape[0], batch):
                x = ids[i:i + batch]
                logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), dim=-1)
                out.append(-logp.gather(-1, x[:, 1:, None])[..., 0])
            return torch.cat(out).cpu().numpy(), batch
        except torch.cuda.OutOfMemoryError:
            pass
        out = None
        torch.cuda.empty_cache()
        if batch == 1:
            raise RuntimeError("straightforward: out of memory at batch size 1")
        batch //= 2


@torch.inference_mode()
def bare_forward(model, ids: torch.Tensor, batch: int) -> None:
    body, head = body_and_head(model)
    for i in range(0, ids.shape[0], batch):
        head(body(input_ids=ids[i:i + batch], use_cache=False).last_hidden_state)


def compare(shape: Shape, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        model32 = GPTNeoXForCausalLM(shape.config()).eval()
    ids = torch.randint(0, shape.vocab, (shape.sequences, shape.context), device=device)
    tokens = shape.sequences * (shape.context - 1)
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    box = {}
    start = 8 if device.type == "cuda" else max(1, 2048 // shape.context)

    def naive():
        box["naive"], box["naive_batch"] = straightforward(model32, ids, box.get("naive_batch", start))

    t_naive = _timed(naive, device, repeats)
    model = model32 if fast_dtype == torch.float32 else model32.to(fast_dtype)
    if model is not model32:
        del model32
        torch.cuda.empty_cache()
    ev = Evaluator(ids, device, fused=True)  # as the losses stage runs it

    def ours():
        box["ours"] = ev(model)

    t_ours = _timed(ours, device, repeats)
    t_bare = _timed(lambda: bare_forward(model, ids, ev.batch_size), device, repeats)
    err = np.abs(box["ours"].reshape(-1) - box["naive"].reshape(-1))
    return {"shape": shape.name, "device": str(device), "dtype": str(fast_dtype)[6:],
            "tokens": tokens, "straightforward": tokens / t_naive, "evaluator": tokens / t_ours,
            "bare": tokens / t_bare, "naive_batch": box["naive_batch"], "batch": ev.batch_size,
            "max_abs_diff": float(err.max()), "mean_abs_diff": float(err.mean())}


def sweep(shape: Shape, device: torch.device, n: int, threads: int | None) -> dict:
    """Evaluate ``n`` saved checkpoints with the stage's worker; wall time vs pure eval time."""
    from pipelines.executor import LocalExecutor
    from spectrum.losses.worker import LossWorker
    from spectrum.losses.plan import Unit
    from spectrum.devices import default_dtype, dtype_name

    tmp = Path(tempfile.mkdtemp(prefix="bench_losses_"))
    try:
        dtype = default_dtype(device)
        paths = []
        for i in range(n):
            torch.manual_seed(i)
            with torch.device(device):
                m = GPTNeoXForCausalLM(shape.config()).to(dtype)
            m.save_pretrained(tmp / f"checkpoint-{i}")
            paths.append(tmp / f"checkpoint-{i}")
            del m
        ids = np.random.default_rng(0).integers(0, shape.vocab, (shape.sequences, shape.context))
        meta = {"context": shape.context,
                "tokenizer": {"vocab_size": shape.vocab, "vocab_hash": "-", "source": "-"}}
        units = [Unit("r", i, str(p), "", {}) for i, p in enumerate(paths)]

        def worker():
            return LossWorker(ids, meta, str(device), dtype_name(dtype), None, threads)

        list(LocalExecutor().map(worker, units[:1]))  # warm-up: imports, kernels, batch size
        t = time.perf_counter()
        results = [o.result for o in LocalExecutor().map(worker, units)]
        wall = time.perf_counter() - t
        evals = sum(r.seconds for r in results)
        return {"shape": shape.name, "device": str(device), "checkpoints": n, "wall": wall,
                "eval_sum": evals, "ratio": wall / evals,
                "load_wait": sum(r.load_wait for r in results)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table(rows: list[dict]) -> str:
    lines = ["| shape | device, dtype | straightforward tok/s | evaluator tok/s | bare forward tok/s "
             "| evaluator / straightforward | evaluator / bare | max abs diff (nats) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['device']}, {r['dtype']} | {r['straightforward']:,.0f} "
                     f"| {r['evaluator']:,.0f} | {r['bare']:,.0f} "
                     f"| {r['evaluator'] / r['straightforward']:.2f}x "
                     f"| {r['evaluator'] / r['bare']:.0%} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("cpu", "gpu", "sweep"), default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    if args.mode in ("gpu", "sweep") and not cuda:
        raise SystemExit(f"--mode {args.mode} needs a CUDA device")
    device = torch.device("cuda" if args.mode != "cpu" else "cpu")
    print(f"# bench_losses --mode {args.mode}: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    if args.mode in ("cpu", "gpu"):
        rows = [compare(s, device, args.repeats) for s in (CPU_SHAPES if args.mode == "cpu"
                                                           else GPU_SHAPES)]
        print(_table(rows))
    shape = GPU_SHAPES[0] if args.mode == "sweep" else CPU_SHAPES[0]
    if args.mode in ("cpu", "sweep"):
        if args.mode == "sweep":  # ~1M tokens: a checkpoint's evaluation outlasts its loading
            shape = Shape(shape.name, shape.width, shape.layers, shape.heads, shape.vocab,
                          shape.context, 512)
        r = sweep(shape, device, args.checkpoints, args.threads)
        print(f"\nsweep: {r['checkpoints']} checkpoints of {r['shape']} on {r['device']}: "
              f"wall {r['wall']:.2f} s, sum of pure evaluation {r['eval_sum']:.2f} s, "
              f"ratio {r['ratio']:.2f} (waiting for loads: {r['load_wait']:.2f} s)")


if __name__ == "__main__":
    main()
