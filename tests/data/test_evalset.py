"""The evalset: windows of real documents, token rows that index them, and annotations checked
against counts and decodings computed here."""

from __future__ import annotations

import collections
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main as cli
from spectrum.data.corpus import documents
from spectrum.errors import SpectrumError
from spectrum.data.evalset import build_evalset, evalset_is_current, load_evalset, write_evalset
from spectrum.manifest import CorpusSpec, EvalsetSpec
from spectrum.data.tokenizer import train_tokenizer

WORDS = ["alpha", "beta", "gamma", "return", "value", "import", "os", "print", "(", ")", ":", "="]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for d in range(40):
        lines = [" ".join(rng.choice(WORDS) if rng.random() < 0.5 else
                          "".join(rng.choices("abcdefghijklmnop_", k=rng.randint(3, 12)))
                          for _ in range(rng.randint(2, 9)))
                 for _ in range(rng.randint(5, 40))]
        (folder / f"doc{d:02d}.txt").write_text("\n".join(lines) + "\n")
    return CorpusSpec(kind="text", path=str(folder / "*.txt"), validation_fraction=0.3)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer([d.text for d in documents(corpus, "train")], 300)


@pytest.fixture(scope="module")
def built(corpus, tokenizer):
    spec = EvalsetSpec(corpus=corpus, sequences=12, context=16, seed=3)
    return spec, *build_evalset(spec, tokenizer, "tok")


def test_sequences_are_windows_of_one_document_and_tokens_index_them(built, corpus, tokenizer):
    spec, sequences, tokens, meta = built
    s, c = spec.sequences, spec.context
    ids = np.array(sequences.column("input_ids").to_pylist())
    assert ids.shape == (s, c) and sequences.column("seq_id").to_pylist() == list(range(s))
    docs = {d.doc_id: d.text for d in documents(corpus, "validation")}
    for seq, doc in zip(ids, sequences.column("doc_id").to_pylist()):
        full = tokenizer(docs[doc], add_special_tokens=False)["input_ids"]
        starts = [i for i in range(0, len(full) - c + 1, c) if full[i:i + c] == seq.tolist()]
        assert starts, f"sequence not found at a window boundary of {doc}"

    t = tokens.to_pydict()
    n = s * (c - 1)
    assert meta["counts"]["tokens"] == n == tokens.num_rows
    assert t["token_idx"] == list(range(n))
    for row in [0, 1, c - 2, c - 1, n - 1]:
        seq, pos = t["seq_id"][row], t["pos"][row]
        assert row == seq * (c - 1) + pos - 1 and 1 <= pos < c
        assert t["target_id"][row] == ids[seq, pos]
        assert t["doc_id"][row] == sequences.column("doc_id")[seq].as_py()
    assert tokens.schema.field("token_idx").type == "int64"
    for col in ("seq_id", "pos", "target_id"):
        assert tokens.schema.field(col).type == "int32"


def test_annotations_match_counts_and_decodings(built, corpus, tokenizer):
    _, sequences, tokens, _ = built
    train = collections.Counter(
        i for d in documents(corpus, "train") for i in tokenizer(d.text, add_special_tokens=False)
        ["input_ids"])
    total = sum(train.values())
    t = tokens.to_pydict()
    for row in range(0, tokens.num_rows, 7):
        assert t["target_freq"][row] == pytest.approx(train[t["target_id"][row]] / total)
    ids = sequences.column("input_ids").to_pylist()
    starts = []
    for row in range(tokens.num_rows):
        seq, pos = t["seq_id"][row], t["pos"][row]
        before = tokenizer.decode(ids[seq][:pos])
        target = tokenizer.decode(ids[seq][:pos + 1])[len(before):]
        starts.append(target[:1].isspace() or before[-1:].isspace())
    assert t["word_start"] == starts
    assert 0.2 < np.mean(starts) < 0.8


def test_deterministic_hash_and_the_seed_changes_it(built, corpus, tokenizer):
    spec, sequences, _, meta = built
    again = build_evalset(spec, tokenizer, "tok")
    assert again[2]["hash"] == meta["hash"] and again[0].equals(sequences)
    other = build_evalset(EvalsetSpec(corpus=corpus, sequences=12, context=16, seed=4),
                          tokenizer, "tok")
    assert other[2]["hash"] != meta["hash"]


def test_too_few_windows_is_an_error(corpus, tokenizer):
    with pytest.raises(SpectrumError, match="fewer than evalset.sequences = 100000"):
        build_evalset(EvalsetSpec(corpus=corpus, sequences=100000, context=16), tokenizer, "t")


def test_written_evalset_loads_and_knows_when_it_is_current(built, tmp_path, tokenizer):
    spec, sequences, tokens, meta = built
    write_evalset(tmp_path, sequences, tokens, meta)
    ev = load_evalset(tmp_path)
    np.testing.assert_array_equal(ev.input_ids, np.array(sequences.column("input_ids").to_pylist()))
    assert ev.hash == meta["hash"] and ev.num_tokens == tokens.num_rows
    assert json.loads((tmp_path / "meta.json").read_text())["tokenizer"]["vocab_size"] == 300
    assert evalset_is_current(tmp_path, spec, tokenizer)
    assert not evalset_is_current(tmp_path, EvalsetSpec(corpus=spec.corpus, sequences=12, context=16,
                                                seed=0), tokenizer)
    (tmp_path / "meta.json").unlink()
    assert not evalset_is_current(tmp_path, spec, tokenizer)
    with pytest.raises(SpectrumError, match="missing or incomplete"):
        load_evalset(tmp_path)


def test_stage_takes_the_tokenizer_of_the_first_checkpoint_and_skips_a_current_evalset(
        write_micro_manifest, tmp_path, tokenizer, capfd):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    path = write_micro_manifest(tmp_path)
    assert cli(["evalset", "--config", str(path)]) == 2
    assert "runs[0] (m1-d1).checkpoints: folder runs/m1-d1 does not exist" in capfd.readouterr().err

    ckpt = tmp_path / "runs" / "m1-d1" / "checkpoint-0"
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=300, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=8)).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    assert cli(["evalset", "--config", str(path)]) == 0
    meta = json.loads((tmp_path / "artifacts" / "evalset" / "meta.json").read_text())
    assert meta["tokenizer"]["source"] == str(ckpt) and meta["tokenizer"]["vocab_size"] == 300
    stamp = (tmp_path / "artifacts" / "evalset" / "tokens.parquet").stat().st_mtime_ns
    assert cli(["evalset", "--config", str(path)]) == 0
    assert "is current" in capfd.readouterr().err
    assert (tmp_path / "artifacts" / "evalset" / "tokens.parquet").stat().st_mtime_ns == stamp
    assert pq.read_table(tmp_path / "artifacts" / "evalset" / "tokens.parquet").num_rows == 16 * 31
