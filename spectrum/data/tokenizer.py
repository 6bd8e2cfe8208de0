"""A byte-level BPE tokenizer trained with Hugging Face ``tokenizers``.

The tokenizer is GPT-2/Pythia style: byte-level pre-tokenization (every byte sequence encodes,
no unknown tokens), BPE merges learned on the given texts, and one special token
``<|endoftext|>`` that serves as beginning-of-text, end-of-text, unknown and padding token, as in
Pythia. It is returned as a :class:`transformers.PreTrainedTokenizerFast` and, with ``out_dir``,
saved with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained(out_dir)`` loads it.
Training is deterministic for the same texts and vocabulary size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    out_dir: Path | str | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ``vocab_size`` entries (256 bytes + merges + EOT)."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
