"""Inputs: corpora, the evaluation set, tokenizers and checkpoint sources."""
