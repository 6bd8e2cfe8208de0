"""The built-in mini scaling suite: ``spectrum suite`` trains the runs the manifest describes.

For every run with a ``train:`` entry (see :mod:`spectrum.suite.config` for the keys) the suite
trains a GPT-NeoX model (Pythia's architecture) with :func:`spectrum.suite.train.train_model` and
writes Hugging Face Trainer style checkpoints into the run's ``checkpoints:`` folder:
``checkpoint-<step>/`` with config.json, model.safetensors, trainer_state.json (``global_step``,
``num_input_tokens_seen`` = step * tokens_per_step, ``log_history``, and a ``suite`` record with
the run's configuration fingerprint) and the tokenizer files. Steps: 0 and a log-spaced schedule
up to the last step.

Shared data, made once and cached under ``<suite.root>/data/<key>/`` (the key hashes the corpus
text and the vocabulary size): the byte-level BPE tokenizer trained on the corpus's train split,
and the train and validation splits tokenized into one stream each (documents joined by
``<|endoftext|>``), cut into non-overlapping sequences of ``context`` tokens.

Resume: each checkpoint folder appears atomically (written under a temporary name, then
renamed). A run whose last checkpoint exists with the current configuration is skipped. After
every checkpoint the optimizer and scheduler state is kept in ``<run>/.resume/state.pt``; an
interrupted run resumes from its last checkpoint and ends exactly as an uninterrupted one would
(on the same device); the file is deleted when the run completes. A run folder holding
checkpoints of another configuration is an error unless ``force`` is given, which retrains it.

Parallelism: on the CPU the runs are trained side by side, one single-threaded process per core
(tiny models gain little from intra-op threads); on a GPU one after another. A run is
deterministic for its seed on a given device and thread count.

Sanity: after training, the suite prints each run's final validation loss beside a unigram
baseline (the cross-entropy of the validation targets under the train split's unigram
distribution, add-one smoothed, same tokenizer and sequences) and writes them to
``<suite.root>/suite_summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spectrum.data.corpus import split_documents
from spectrum.errors import SpectrumError
from spectrum.manifest import Manifest
from spectrum.store import write_json
from spectrum.suite.config import RunPlan, SuiteConfig, SuitePlan, gpt_neox_config, plan_suite

SUMMARY = "suite_summary.json"
RESUME = ".resume"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class SuiteData:
    """What every run of a suite trains and is evaluated on."""

    tokenizer: Any  # PreTrainedTokenizerFast
    tokenizer_dir: Path
    train_sequences: Any  # torch.Tensor [n, context], int32
    eval_sequences: Any  # torch.Tensor [m, context], int32: evenly spaced validation sequences
    unigram_loss: float  # nats per validation target under the train split's unigram distribution


# --- shared data -------------------------------------------------------------------------------

def _token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    eot = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = np.fromiter((t for doc in ids for t in (*doc, eot)), dtype=np.int32,
                      count=sum(len(d) + 1 for d in ids))
    return out


def _sequences(stream: np.ndarray, context: int):
    import torch

    n = len(stream) // context
    return torch.from_numpy(stream[: n * context].reshape(n, context).copy())


def prepare_data(config: SuiteConfig) -> SuiteData:
    """Train (or load from the cache) the tokenizer and tokenize the corpus's two splits."""
    import torch
    from transformers import AutoTokenizer

    from spectrum.data.tokenizer import train_tokenizer

    splits = split_documents(config.corpus)
    train_docs, val_docs = splits["train"], splits["validation"]
    c = config.corpus  # the path is left out: the content decides
    h = hashlib.sha256(json.dumps([c.kind, c.field, c.column, c.validation_fraction,
                                   config.vocab_size]).encode())
    for d in train_docs + val_docs:
        h.update(d.doc_id.encode() + b"\0" + d.text.encode() + b"\0")
    cache = config.root / "data" / h.hexdigest()[:16]
    meta_path = cache / "meta.json"
    if meta_path.is_file():
        tokenizer = AutoTokenizer.from_pretrained(cache / "tokenizer")
        train = np.load(cache / "train.npy")
        val = np.load(cache / "validation.npy")
    else:
        print(f"suite: training a {config.vocab_size}-token BPE tokenizer on {len(train_docs)} "
              f"documents and tokenizing the corpus", file=sys.stderr)
        tokenizer = train_tokenizer((d.text for d in train_docs), config.vocab_size,
                                    cache / "tokenizer")
        train = _token_stream(tokenizer, [d.text for d in train_docs])
        val = _token_stream(tokenizer, [d.text for d in val_docs])
        for name, arr in (("train.npy", train), ("validation.npy", val)):
            tmp = cache / f".{name}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, cache / name)
        write_json({"corpus": asdict(config.corpus), "vocab_size": len(tokenizer),
                    "train_documents": len(train_docs), "validation_documents": len(val_docs),
                    "train_tokens": int(len(train)), "validation_tokens": int(len(val))}, meta_path)
    train_seq = _sequences(train, config.context)
    val_seq = _sequences(val, config.context)
    if len(train_seq) == 0 or len(val_seq) == 0:
        raise SpectrumError(f"suite.corpus: the {'train' if len(train_seq) == 0 else 'validation'} "
                            f"split holds fewer than one sequence of {config.context} tokens")
    pick = np.unique(np.linspace(0, len(val_seq) - 1, min(config.eval_sequences, len(val_seq))).round())
    eval_seq = val_seq[torch.from_numpy(pick.astype(np.int64))]
    return SuiteData(tokenizer=tokenizer, tokenizer_dir=cache / "tokenizer", train_sequences=train_seq,
                     eval_sequences=eval_seq,
                     unigram_loss=unigram_loss(train, eval_seq[:, 1:].numpy(), len(tokenizer)))


def unigram_loss(train_tokens: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """Mean -ln p(target) under the add-one smoothed unigram distribution of ``train_tokens``."""
    counts = np.bincount(train_tokens.ravel(), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts) - math.log(counts.sum())
    return float(-logp[targets.ravel()].mean())


# --- run folders -------------------------------------------------------------------------------

def checkpoint_steps_in(folder: Path) -> list[int]:
    """Steps of the complete ``checkpoint-<step>`` folders in ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir()
                  if p.is_dir() and (m := _CHECKPOINT.match(p.name)))


def _suite_record(folder: Path, step: int) -> dict | None:
    try:
        state = json.loads((folder / f"checkpoint-{step}" / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state.get("suite"), dict) else None


def run_status(plan: SuitePlan, run: RunPlan) -> str:
    """``complete``, ``todo`` (nothing, or an interrupted run of this configuration) or ``stale``
    (checkpoints of another configuration, or not written by the suite)."""
    steps = checkpoint_steps_in(run.folder)
    if not steps:
        return "todo"
    fp = plan.fingerprint(run)
    states = {s: _suite_record(run.folder, s) for s in steps}
    if any(st is None or st["suite"].get("fingerprint") != fp for st in states.values()):
        return "stale"
    return "complete" if run.steps in steps else "todo"


def _clear_run(folder: Path) -> None:
    for step in checkpoint_steps_in(folder):
        shutil.rmtree(folder / f"checkpoint-{step}")
    shutil.rmtree(folder / RESUME, ignore_errors=True)


def _load_resume(plan: SuitePlan, run: RunPlan) -> dict[str, Any] | None:
    import torch

    path = run.folder / RESUME / "state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a damaged resume file: start over
        return None
    ok = (state.get("fingerprint") == plan.fingerprint(run)
          and (run.folder / f"checkpoint-{state['step']}").is_dir())
    return state if ok else None


def _save_resume(folder: Path, record: dict[str, Any]) -> None:
    import torch

    (folder / RESUME).mkdir(parents=True, exist_ok=True)
    tmp = folder / RESUME / "state.pt.tmp"
    torch.save(record, tmp)
    os.replace(tmp, folder / RESUME / "state.pt")


# --- training ----------------------------------------------------------------------------------

def train_run(plan: SuitePlan, run: RunPlan, data: SuiteData, *, device: str = "auto",
              progress: bool = True, position: int | None = None) -> dict[str, Any]:
    """Train one run (resuming if it was interrupted); return its summary record."""
    from spectrum.suite import train as st

    c = plan.config
    folder = run.folder
    folder.mkdir(parents=True, exist_ok=True)
    st.remove_partials(folder)
    fp = plan.fingerprint(run)
    resume = _load_resume(plan, run)
    if resume is None:
        _clear_run(folder)
    log_history: list[dict[str, Any]] = list(resume["log_history"]) if resume else []
    model_config = gpt_neox_config(run.size, len(data.tokenizer), c.context,
                                   eos_token_id=data.tokenizer.eos_token_id)
    extra = {"suite": {"run": run.run.name, "size": asdict(run.size), "seed": run.seed,
                       "tokens_per_step": run.run.tokens_per_step, "context": c.context,
                       "fingerprint": fp}}

    def on_checkpoint(s: st.TrainState) -> None:
        entry = {"step": s.step, "num_input_tokens_seen": s.tokens_seen,
                 "learning_rate": s.learning_rate}
        if s.train_loss is not None:
            entry["loss"] = s.train_loss
        if s.eval_loss is not None:
            entry["eval_loss"] = s.eval_loss
        log_history.append(entry)
        state = st.trainer_state(s, max_steps=run.steps, batch_size=run.batch_size,
                                 n_sequences=len(data.train_sequences), extra=extra,
                                 log_history=log_history)
        st.save_checkpoint(folder, s.step, s.model, data.tokenizer, state)
        if s.step < run.steps:
            _save_resume(folder, {"step": s.step, "fingerprint": fp, "log_history": log_history,
                                  "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                                  "scheduler": s.scheduler.state_dict()})

    cpu0 = time.process_time()
    result = st.train_model(
        model_config, data.train_sequences, steps=run.steps, tokens_per_step=run.run.tokens_per_step,
        seed=run.seed, optim=c.optim,
        checkpoint_steps=run.checkpoint_steps, on_checkpoint=on_checkpoint,
        eval_sequences=data.eval_sequences, eval_steps={run.steps}, device=device,
        resume=resume, progress=run.run.name if progress else False, progress_position=position)
    shutil.rmtree(folder / RESUME, ignore_errors=True)
    record = _summary_record(plan, run, data.unigram_loss)
    record["train_seconds"] = round(result.seconds, 2)
    record["cpu_seconds"] = round(time.process_time() - cpu0, 2)  # all threads; robust to contention
    if resume is None:
        record["tokens_per_second"] = round(result.tokens_seen / max(result.seconds, 1e-9))
    return record


def _summary_record(plan: SuitePlan, run: RunPlan, unigram: float | None) -> dict[str, Any]:
    state = _suite_record(run.folder, run.steps) or {}
    evals = [e["eval_loss"] for e in state.get("log_history", []) if "eval_loss" in e]
    return {"size": run.size.name, "seed": run.seed, "params": int(run.run.params),
            "tokens": int(run.run.tokens), "steps": run.steps, "role": run.run.role,
            "checkpoints": len(run.checkpoint_steps),
            "final_val_loss": evals[-1] if evals else None, "unigram_val_loss": unigram}


def format_summary(summary: dict[str, Any]) -> str:
    rows = [f"{'run':<12} {'size':<6} {'seed':>4} {'M':>9} {'D':>10} {'steps':>6} "
            f"{'val loss':>9} {'unigram':>8}"]
    for name, r in summary["runs"].items():
        val = f"{r['final_val_loss']:.3f}" if r.get("final_val_loss") is not None else "-"
        uni = f"{r['unigram_val_loss']:.3f}" if r.get("unigram_val_loss") is not None else "-"
        rows.append(f"{name:<12} {r['size']:<6} {r['seed']:>4} {r['params']:>9} {r['tokens']:>10} "
                    f"{r['steps']:>6} {val:>9} {uni:>8}")
    return "\n".join(rows)


def _workers(requested: int | None, device: str, n_runs: int) -> int:
    """Auto: on the CPU one single-threaded process per core (tiny models gain little from
    intra-op threads and lose much to oversubscription); on a GPU one process."""
    import torch

    from spectrum.devices import resolve_device

    if requested is not None:
        return max(1, min(requested, n_runs))
    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads(), n_runs))


def _cost(run: RunPlan, vocab_size: int) -> float:
    """Rough training cost of a run, to start the longest first."""
    return run.run.tokens * (run.run.params + 2 * vocab_size * run.size.width)


_WORKER: dict[str, Any] = {}


def _init_worker(config: SuiteConfig, threads: int, slots) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(threads)
    with slots.get_lock():
        _WORKER["slot"] = slots.value
        slots.value += 1
    _WORKER["data"] = prepare_data(config)


def _train_in_worker(plan: SuitePlan, index: int, device: str, progress: bool) -> dict[str, Any]:
    return train_run(plan, plan.runs[index], _WORKER["data"], device=device, progress=progress,
                     position=_WORKER["slot"])


def _stop(executor) -> None:
    """Cancel what has not started and end the worker processes now (their runs resume later)."""
    executor.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()


def _train_in_pool(plan: SuitePlan, todo: list[RunPlan], n: int, device: str,
                   progress: bool) -> dict[str, dict[str, Any]]:
    """Train ``todo`` in ``n`` spawned processes. The workers ignore Ctrl-C; on an interrupt
    (or a failed run) the parent ends them, and each run resumes on the next call. A worker that
    dies (killed by the system, for instance for memory) fails the call with the runs it left
    unfinished instead of leaving it waiting for them."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // n)
    index = {r.run.name: i for i, r in enumerate(plan.runs)}
    executor = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(plan.config, threads, ctx.Value("i", 0)))
    try:
        pending = {executor.submit(_train_in_worker, plan, index[r.run.name], device, progress): r.run.name
                   for r in todo}
        done, _ = wait(pending, return_when=FIRST_EXCEPTION)  # all done, or the first failure
        for future in done:
            error = future.exception()
            if isinstance(error, BrokenProcessPool):
                unfinished = sorted(name for f, name in pending.items()
                                    if not f.done() or f.exception() is not None)
                raise SpectrumError(
                    f"suite: a training process ended abruptly (killed, perhaps for memory) with "
                    f"runs {', '.join(unfinished)} unfinished; their checkpoints so far are kept "
                    f"and the same command resumes them") from None
            if error is not None:
                raise error
        records = {name: future.result() for future, name in pending.items()}
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown(wait=True)
    return records


def train_suite(manifest: Manifest, *, device: str = "auto", force: bool = False,
                progress: bool = True, workers: int | None = None) -> dict[str, Any] | None:
    """Train every incomplete run of the manifest's suite; return the summary (None: no suite).

    ``workers``: runs trained at once, each in its own process (default: one single-threaded
    process per CPU core on the CPU, one on a GPU; 1 trains in this process). Cheap when every
    run is complete: only the manifest and the checkpoint folders' ``trainer_state.json`` are read.
    """
    plan = plan_suite(manifest)
    if plan is None:
        return None
    status = {run.run.name: run_status(plan, run) for run in plan.runs}
    stale = [run for run in plan.runs if status[run.run.name] == "stale"]
    if stale and not force:
        raise SpectrumError(*(
            f"{run.folder}: holds checkpoints of another suite configuration (or not written by "
            f"the suite) for run {run.run.name}; rerun with --force to retrain it "
            f"(its checkpoint-<step> folders are replaced)" for run in stale))
    todo = [run for run in plan.runs if force or status[run.run.name] != "complete"]
    summary_path = plan.config.root / SUMMARY
    try:
        previous = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        previous = {}
    if not todo:
        summary = previous if previous.get("runs", {}).keys() >= status.keys() else None
        if summary is None:
            summary = {"unigram_val_loss": None,
                       "runs": {r.run.name: _summary_record(plan, r, None) for r in plan.runs}}
        print(f"suite: all {len(plan.runs)} runs complete", file=sys.stderr)
        return summary

    t0 = time.perf_counter()
    data = prepare_data(plan.config)  # builds the shared cache once, before any worker starts
    records = dict(previous.get("runs", {}))
    todo.sort(key=lambda r: -_cost(r, len(data.tokenizer)))
    for run in todo:
        if force:
            _clear_run(run.folder)
        print(f"suite: {run.run.name}: size {run.size.name} (M={int(run.run.params)}), {run.steps} "
              f"steps of {run.run.tokens_per_step} tokens, seed {run.seed}", file=sys.stderr)
    n = _workers(workers, device, len(todo))
    if n == 1:
        for run in todo:
            records[run.run.name] = train_run(plan, run, data, device=device, progress=progress)
    else:
        records.update(_train_in_pool(plan, todo, n, device, progress))
    summary = {"unigram_val_loss": data.unigram_loss, "eval_sequences": len(data.eval_sequences),
               "context": plan.config.context, "vocab_size": len(data.tokenizer),
               "runs": {r.run.name: records.get(r.run.name) or _summary_record(plan, r, data.unigram_loss)
                        for r in plan.runs}}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["workers"] = n
    write_json(summary, summary_path)
    print(format_summary(summary), file=sys.stderr)
    print(f"suite: trained {len(todo)} runs in {summary['wall_seconds']:.0f} s ({n} at once); "
          f"summary in {summary_path}", file=sys.stderr)
    _check_learned(plan, summary)
    return summary


def _check_learned(plan: SuitePlan, summary: dict[str, Any]) -> None:
    """Warn when the largest model did not beat the unigram baseline (it has learned nothing)."""
    largest = max(plan.runs, key=lambda r: (r.run.params, r.run.tokens))
    rec = summary["runs"][largest.run.name]
    if rec["final_val_loss"] is not None and rec["unigram_val_loss"] is not None \
            and rec["final_val_loss"] >= rec["unigram_val_loss"]:
        print(f"suite: warning: the largest run {largest.run.name} ends at validation loss "
              f"{rec['final_val_loss']:.3f}, not below the unigram baseline "
              f"{rec['unigram_val_loss']:.3f}; it barely learned", file=sys.stderr)
