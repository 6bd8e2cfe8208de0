"""Weights for every sequence of a corpus: the learnability model on planted worlds (one where
token types carry the learnability, one where nothing does) and the streaming export."""

from __future__ import annotations


import numpy as np
import pyarrow.parquet as pq

from spectrum.curriculum.corpus_export import export_corpus, window_key
from spectrum.curriculum.predict import fit_shed_model
from spectrum.data.corpus import Document


def planted(rng, n_seq=200, length=40, vocab=50, P=3, signal=True, docs_per=4):
    """Scored tokens whose shed per phase is a property of their type (or of nothing)."""
    type_shed = rng.gamma(1.0, 0.5, size=(vocab, P))
    # sequences prefer some types, so that their compositions (hence their shed) differ
    prefs = rng.dirichlet(np.full(vocab, 0.3), size=n_seq)
    ids = np.concatenate([rng.choice(vocab, size=length, p=p) for p in prefs])
    seq = np.repeat(np.arange(n_seq), length)
    noise = rng.normal(0, 0.3, size=(len(ids), P))
    shed = np.clip((type_shed[ids] if signal else type_shed.mean(0)) + noise, 0, None)
    docs = [f"d{s // docs_per}" for s in range(n_seq)]
    return ids, seq, shed, docs, type_shed


def test_shed_model_predicts_held_out_documents_where_types_carry_learnability():
    rng = np.random.default_rng(0)
    ids, seq, shed, docs, truth = planted(rng)
    m = fit_shed_model(ids, seq, shed, docs, 50, prior=5.0)
    assert m.n_documents == 50 and m.folds == 5
    assert min(m.cv_r2) > 0.6 and min(m.cv_r2_raw) > 0.3
    # a new sequence made of one type is predicted near that type's shed
    one = m.predict(np.full(30, 7), np.zeros(30, dtype=int), 1)[0]
    np.testing.assert_allclose(one, truth[7], atol=0.15)
    # an unknown type (id beyond the vocabulary) gets the mean, not an error
    assert np.isfinite(m.predict(np.array([999, 3]), np.array([0, 0]), 1)).all()


def test_shed_model_reports_no_skill_where_nothing_carries_learnability():
    ids, seq, shed, docs, _ = planted(np.random.default_rng(1), signal=False)
    m = fit_shed_model(ids, seq, shed, docs, 50, prior=5.0)
    assert max(m.cv_r2) < 0.1  # held-out R^2 cannot be talked up on noise


class WordTokenizer:
    """A stand-in for a transformers tokenizer: one id per whitespace-separated word."""

    def __init__(self, vocab: int = 40) -> None:
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[sum(map(ord, w)) % self.vocab for w in t.split()] for t in texts]}


def test_export_streams_every_window_and_document_with_mean_one_weights(tmp_path):
    from spectrum.curriculum.weights import CurriculumWeights, phase_schedule
    from spectrum.store import write_json

    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 60, size=120)]
    docs = [Document(f"doc{i:03d}", t) for i, t in enumerate(texts)]
    tok = WordTokenizer()
    ids, seq, shed, sdocs, _ = planted(rng, n_seq=60, length=8, vocab=40)
    model = fit_shed_model(ids, seq, shed, sdocs, 40)
    # one scored window: the first window of doc005, with a measured shed of its own
    first = np.asarray(tok([texts[5]])["input_ids"][0][:8], dtype=np.int32)
    measured = {window_key("doc005", first): (17, np.array([9.0, 9.0, 9.0]))}
    consumed = []

    def stream():
        for d in docs:
            consumed.append(d.doc_id)
            yield d

    counts = export_corpus(stream(), tok, 8, model, measured, tmp_path, floor=0.2,
                           batch_docs=16, batch_rows=32, progress=False,
                           provenance={"runs": ["r"], "phases": phase_schedule(100, 10, 3).to_dict()})
    write_json(phase_schedule(100, 10, 3).to_dict(), tmp_path / "phases.json")
    assert len(consumed) == 120 and counts.documents == 120
    lengths = [len(tok([t])["input_ids"][0]) for t in texts]
    windows = sum(sum(1 for s in range(0, n, 8) if n - s >= 2) for n in lengths)
    assert counts.sequences == windows and counts.sequences_measured == 1
    assert counts.documents_weighted == sum(n >= 2 for n in lengths)
    assert pq.ParquetFile(tmp_path / "weights.parquet").num_row_groups > 1  # written as it streams
    cw = CurriculumWeights.read(tmp_path)
    for level in ("sequences", "documents"):
        w = cw.weight_matrix(level)
        assert np.isfinite(w).all() and (w >= 0.2 - 1e-12).all()
        np.testing.assert_allclose(w.mean(0), 1.0)
    seqs = cw.sequences
    hit = seqs.filter(seqs["source"] == "measured")
    assert hit["doc_id"].to_list() == ["doc005"] and hit["scored_seq_id"].to_list() == [17]
    assert hit["shed_p0"].to_list() == [9.0] and hit["w_phase0"][0] == seqs["w_phase0"].max()
    assert seqs["seq_id"].to_list() == list(range(windows))
    # every document of the corpus is in the documents table, in the corpus's order
    assert cw.documents["doc_id"].to_list() == [d.doc_id for d in docs]
    assert cw.meta["counts"]["sequences"] == windows
    al = cw.align([d.doc_id for d in docs])
    assert al.matched_items == 120 and not al.missing_ids
    assert not list(tmp_path.glob(".*partial"))


def test_iter_documents_streams_the_same_split_as_documents(tmp_path):
    from spectrum.data.corpus import documents, iter_documents
    from spectrum.manifest import CorpusSpec

    for i in range(30):
        (tmp_path / f"f{i:02d}.txt").write_text(f"text of file {i}\n" if i != 3 else "  \n")
    spec = CorpusSpec(kind="text", path=str(tmp_path / "*.txt"), validation_fraction=0.3)
    for split in ("train", "validation"):
        assert [d.doc_id for d in iter_documents(spec, split)] == [d.doc_id for d in documents(spec, split)]
    assert len(list(iter_documents(spec, None))) == 29  # the blank file is no document
