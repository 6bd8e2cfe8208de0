"""``spectrum evalset``: draw the evaluation set (see :mod:`spectrum.data.evalset`).

The tokenizer is ``evalset.tokenizer`` of the manifest (a folder, or a hub id in the local
cache), or else the tokenizer saved with the first checkpoint of the first run. An evalset that
is current (same corpus, split, seed, sizes and vocabulary) is kept; ``--force`` redraws it.
"""

from __future__ import annotations

import dataclasses
import logging

from pipelines.evalset_options import HELP, OPTIONS  # noqa: F401 - exposed by every stage
from pipelines.evalset_options import EvalsetOptions
from spectrum.data.checkpoints import resolve_checkpoints, validate_checkpoint_sources
from spectrum.errors import SpectrumError
from spectrum.data.evalset import build_evalset, evalset_is_current, load_tokenizer, write_evalset
from spectrum.layout import evalset_dir
from spectrum.manifest import Manifest

log = logging.getLogger(__name__)


def tokenizer_source(manifest: Manifest) -> str:
    """Where the evalset's tokenizer comes from (see the module doc)."""
    if manifest.evalset.tokenizer:
        return manifest.evalset.tokenizer
    first = manifest.runs[0]
    validate_checkpoint_sources(dataclasses.replace(manifest, runs=(first,)))
    ckpt = resolve_checkpoints(first)[0]
    if not any((ckpt.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json",
                                                     "tokenizer.model", "vocab.json")):
        raise SpectrumError(f"checkpoint {ckpt.path} (the first of run {first.name}) has no "
                            "tokenizer: set evalset.tokenizer in the manifest")
    return str(ckpt.path)


def main(manifest: Manifest, options: EvalsetOptions) -> None:
    folder = evalset_dir(manifest.out)
    source = tokenizer_source(manifest)
    tokenizer = load_tokenizer(source)
    if not options.force and evalset_is_current(folder, manifest.evalset, tokenizer):
        log.info(f"evalset: {folder} is current")
        return
    sequences, tokens, meta = build_evalset(manifest.evalset, tokenizer, source)
    write_evalset(folder, sequences, tokens, meta)
    log.info(f"evalset: {meta['sequences']} sequences x {meta['context']} tokens "
             f"({meta['counts']['tokens']} targets) from {meta['counts']['documents']} "
             f"{manifest.evalset.split} documents -> {folder}")
