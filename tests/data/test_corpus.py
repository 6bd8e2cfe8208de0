"""Corpora (every kind, the document-level split, error messages) and the BPE tokenizer."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from spectrum.data.corpus import Document, all_documents, documents, split_of, split_score
from spectrum.errors import SpectrumError
from spectrum.manifest import CorpusSpec
from spectrum.data.tokenizer import EOT, train_tokenizer


def _write_texts(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:03d}.txt").write_text(f"document number {i}\n" * (i % 3 + 1))


# --- the split ---------------------------------------------------------------------------------

doc_ids = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids=doc_ids, fraction=st.floats(0.01, 0.99))
def test_split_is_a_partition_and_depends_only_on_each_id(ids, fraction):
    docs = [Document(i, "x") for i in ids]
    assignment = split_of(docs, fraction)
    assert set(assignment) == set(ids)  # every document in exactly one split
    if len(ids) >= 2:
        assert set(assignment.values()) == {"train", "validation"}
    # the side of a document depends on its own id only: the natural side is its hash's, and
    # the non-empty rule moves at most one document (the extreme hash) of a one-sided split
    natural = {i: ("validation" if split_score(i) < fraction else "train") for i in ids}
    assert sum(assignment[i] != natural[i] for i in ids) <= 1
    assert split_of(list(reversed(docs)), fraction) == assignment
    bigger = split_of(docs + [Document("extra-" + i, "x") for i in ids], fraction)
    assert sum(bigger[i] != natural[i] for i in bigger if i in natural) <= 1


def test_split_score_is_stable_across_processes():
    # SHA-256, not Python's salted hash(): a fixed value for a fixed id
    assert split_score("abc") == int("ba7816bf8f01cfea", 16) / 2.0**64


def test_text_corpus_split_is_deterministic_without_leakage(tmp_path):
    _write_texts(tmp_path / "data", 40)
    spec = CorpusSpec(kind="text", path=str(tmp_path / "data" / "*.txt"), validation_fraction=0.25)
    train, val = documents(spec, "train"), documents(spec, "validation")
    assert train == documents(spec, "train") and val == documents(spec, "validation")
    assert {d.doc_id for d in train}.isdisjoint(d.doc_id for d in val)
    assert len(train) + len(val) == 40
    assert 2 <= len(val) <= 20
    assert [d.doc_id for d in train] == sorted(d.doc_id for d in train)
    # ids are relative to the glob's folder: moving the data keeps the split
    (tmp_path / "data").rename(tmp_path / "moved")
    moved = CorpusSpec(kind="text", path=str(tmp_path / "moved" / "*.txt"), validation_fraction=0.25)
    assert documents(moved, "validation") == val


def test_python_stdlib_corpus():
    spec = CorpusSpec()
    train, val = documents(spec, "train"), documents(spec, "validation")
    ids = {d.doc_id for d in train} | {d.doc_id for d in val}
    assert len(ids) == len(train) + len(val) > 500
    assert "os.py" in ids and "json/decoder.py" in ids
    assert any(i.startswith("pydoc:") for i in ids)
    assert not any(i.startswith(("site-packages/", "test/")) for i in ids)
    os_doc = next(d for d in train + val if d.doc_id == "os.py")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert os_doc.text == (stdlib / "os.py").read_text(encoding="utf-8")
    assert 0.05 < len(val) / len(ids) < 0.15  # validation_fraction 0.1


# --- each kind and its errors ------------------------------------------------------------------

def test_jsonl_corpus_ids_and_field(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second", "id": 7}) + "\n"
                 + json.dumps({"body": "   "}) + "\n")
    spec = CorpusSpec(kind="jsonl", path=str(tmp_path / "*.jsonl"), field="body")
    docs = all_documents(spec)
    assert docs == [Document("7", "second"), Document("a.jsonl:1", "first")]


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(SpectrumError, match=r"a\.jsonl:2: .*'text'"):
        all_documents(CorpusSpec(kind="jsonl", path=str(f)))
    f.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SpectrumError, match=r"a\.jsonl:2: not valid JSON"):
        all_documents(CorpusSpec(kind="jsonl", path=str(f)))


def test_parquet_corpus(tmp_path):
    pq.write_table(pa.table({"content": ["alpha", "beta", None, ""]}), tmp_path / "p.parquet")
    pq.write_table(pa.table({"content": ["gamma"], "id": ["g-1"]}), tmp_path / "q.parquet")
    spec = CorpusSpec(kind="parquet", path=str(tmp_path / "*.parquet"), column="content")
    assert all_documents(spec) == [Document("g-1", "gamma"), Document("p.parquet:0", "alpha"),
                                   Document("p.parquet:1", "beta")]


def test_parquet_missing_column(tmp_path):
    pq.write_table(pa.table({"body": ["alpha"]}), tmp_path / "p.parquet")
    with pytest.raises(SpectrumError, match=r"p\.parquet: has no column 'text'"):
        all_documents(CorpusSpec(kind="parquet", path=str(tmp_path / "p.parquet")))


def test_glob_matching_nothing_names_the_key_and_path(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.txt")
    with pytest.raises(SpectrumError, match=r"evalset\.corpus\.path: no files match .*nothing"):
        documents(CorpusSpec(kind="text", path=pattern), "train")


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("  \n")
    with pytest.raises(SpectrumError, match=r"evalset\.corpus: .* no non-empty documents"):
        documents(CorpusSpec(kind="text", path=str(tmp_path / "*.txt")), "train")


def test_duplicate_ids_are_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x", "id": 1}\n{"text": "y", "id": 1}\n')
    with pytest.raises(SpectrumError, match="occurs twice"):
        all_documents(CorpusSpec(kind="jsonl", path=str(tmp_path / "a.jsonl")))


# --- tokenizer ---------------------------------------------------------------------------------

def test_tokenizer_roundtrip_and_reload(tmp_path):
    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 0\n"] * 20
    tok = train_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == len(tok) <= 300
    assert loaded.eos_token == loaded.bos_token == EOT
    sample = "def add(a, b):\n    return 'ünïcode ✓'\n"
    ids = loaded(sample)["input_ids"]
    assert ids == tok(sample)["input_ids"]
    assert loaded.decode(ids) == sample  # byte level: everything round-trips
    assert loaded.convert_ids_to_tokens(loaded.eos_token_id) == EOT
    # BPE learned merges: a frequent word is shorter than its bytes
    assert len(loaded("return")["input_ids"]) < len("return")


def test_tokenizer_training_is_deterministic(tmp_path):
    texts = [f"line {i} of text {i * i}\n" for i in range(200)]
    a = train_tokenizer(texts, 320, tmp_path / "a")
    b = train_tokenizer(texts, 320, tmp_path / "b")
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


# --- a separate validation corpus, and split: all ------------------------------------------------

def test_separate_validation_corpus_is_all_validation(tmp_path):
    from spectrum.data.corpus import iter_documents, split_documents

    _write_texts(tmp_path / "train", 12)
    _write_texts(tmp_path / "held", 5)
    spec = CorpusSpec(kind="text", path=str(tmp_path / "train" / "*.txt"),
                      validation=CorpusSpec(kind="text", path=str(tmp_path / "held" / "*.txt")))
    splits = split_documents(spec)
    assert [d.doc_id for d in splits["train"]] == [f"doc{i:03d}.txt" for i in range(12)]
    assert [d.doc_id for d in splits["validation"]] == [f"validation:doc{i:03d}.txt"
                                                         for i in range(5)]
    # the same documents, streamed
    assert sorted(d.doc_id for d in iter_documents(spec, "validation")) == \
        [d.doc_id for d in splits["validation"]]
    assert sorted(d.doc_id for d in iter_documents(spec, None)) == \
        sorted(d.doc_id for d in documents(spec, "all"))
    assert len(documents(spec, "all")) == 17


def test_split_all_is_both_splits_in_the_evalset_and_the_stream(tmp_path):
    from spectrum.data.corpus import iter_documents

    _write_texts(tmp_path, 40)
    spec = CorpusSpec(kind="text", path=str(tmp_path / "*.txt"))
    both = documents(spec, "all")
    assert {d.doc_id for d in both} == {d.doc_id for d in documents(spec, "train")} | \
        {d.doc_id for d in documents(spec, "validation")}
    assert sorted(d.doc_id for d in iter_documents(spec, None)) == [d.doc_id for d in both]


def test_manifest_reads_a_validation_corpus_and_split_all(tmp_path):
    import yaml

    from spectrum.manifest import load_manifest

    _write_texts(tmp_path / "train", 3)
    _write_texts(tmp_path / "held", 3)
    data = {"evalset": {"split": "all",
                        "corpus": {"kind": "text", "path": "train/*.txt",
                                   "validation": {"kind": "text", "path": "held/*.txt"}}},
            "runs": [{"name": "a", "params": 1e6, "tokens": 1e9, "tokens_per_step": 8,
                      "role": "fit", "checkpoints": "runs/a"}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    ev = load_manifest(tmp_path / "m.yaml").evalset
    assert ev.split == "all"
    assert ev.corpus.validation.path == str(tmp_path / "held" / "*.txt")
    data["evalset"]["corpus"]["validation_fraction"] = 0.2
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpectrumError, match="evalset.corpus.validation_fraction"):
        load_manifest(tmp_path / "m.yaml")
