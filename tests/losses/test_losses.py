"""The evaluator against transformers' own cross-entropy, and the checks run before evaluating."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM)

from spectrum.errors import SpectrumError
from spectrum.data.evalset import tokenizer_identity
from spectrum.losses.evaluator import Evaluator, check_compatible, load_model, token_losses
from spectrum.data.tokenizer import train_tokenizer

VOCAB = 300
TEXTS = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n", "import os\nprint(os.sep)\n"] * 5


def _models(positions: int = 64) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    models = [
        GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64,
                                         max_position_embeddings=positions)),
        LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=64, max_position_embeddings=positions)),
        GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=positions, bos_token_id=0, eos_token_id=0)),
    ]
    for m in models:  # sharpen the logits so that losses differ a lot between tokens
        with torch.no_grad():
            m.get_output_embeddings().weight.mul_(20)
    return [m.eval() for m in models]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (7, 33), generator=torch.Generator().manual_seed(1))


def _reference(model, ids) -> np.ndarray:
    """-log softmax(logits)[target] from transformers' full logits, in float64."""
    with torch.no_grad():
        logits = model(ids).logits.double()
    return -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].numpy()


@pytest.mark.parametrize("i", [0, 1, 2], ids=["gpt_neox", "llama", "gpt2"])
def test_fp32_losses_agree_with_transformers(i, ids):
    model = _models()[i]
    ours = token_losses(model, ids, batch_size=3)
    assert ours.shape == (7, 32) and ours.dtype == np.float32
    ref = _reference(model, ids)
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.std() > 1.0  # the comparison is not between near-constant numbers
    with torch.no_grad():  # transformers' own mean loss over the same targets
        hf = model(ids, labels=ids).loss.item()
    assert abs(ours.mean() - hf) < 1e-4


def test_chunking_and_batch_size_do_not_change_losses(ids):
    model = _models()[0]
    whole = Evaluator(ids, batch_size=7)(model)
    tiny = Evaluator(ids, batch_size=2, max_logit_elements=VOCAB * 5)(model)  # 5 rows per chunk
    np.testing.assert_allclose(tiny, whole, atol=1e-5)


def test_bf16_tolerance(ids):
    """The bf16 path stays within the tolerance the module doc states."""
    model = _models()[0]
    ref = _reference(model, ids)
    ours = token_losses(model.to(torch.bfloat16), ids)
    err = np.abs(ours - ref)
    assert err.max() < 0.25 and err.mean() < 0.05


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, VOCAB)


def _meta(tokenizer, context: int) -> dict:
    return {"context": context, "tokenizer": tokenizer_identity(tokenizer, "the-tokenizer")}


def test_checks_tokenizer_vocab_and_context(tmp_path, tokenizer):
    model = _models(positions=32)[0]
    ok = tmp_path / "ok"
    model.save_pretrained(ok)
    tokenizer.save_pretrained(ok)
    check_compatible(ok, model.config, _meta(tokenizer, 32))

    with pytest.raises(SpectrumError, match=f"checkpoint {ok}: the evalset's context 33 exceeds "
                                            "the model's max_position_embeddings 32"):
        check_compatible(ok, model.config, _meta(tokenizer, 33))

    other = tmp_path / "other"
    model.save_pretrained(other)
    train_tokenizer(TEXTS[:1] + ["something else entirely"], VOCAB).save_pretrained(other)
    with pytest.raises(SpectrumError, match=f"checkpoint {other}: its tokenizer's vocabulary "
                                            "differs from the evalset's"):
        check_compatible(other, model.config, _meta(tokenizer, 16))

    bare = tmp_path / "bare"  # no tokenizer saved: the embedding must cover the vocabulary
    model.save_pretrained(bare)
    check_compatible(bare, model.config, _meta(tokenizer, 16))
    meta = _meta(tokenizer, 16)
    meta["tokenizer"]["vocab_size"] = VOCAB + 1
    with pytest.raises(SpectrumError, match="vocab_size 300 is smaller than the evalset "
                                            "tokenizer's 301 tokens"):
        check_compatible(bare, model.config, meta)


def test_unreadable_checkpoints_name_their_path(tmp_path):
    model = _models()[0]
    model.save_pretrained(tmp_path / "good")
    assert isinstance(load_model(tmp_path / "good"), GPTNeoXForCausalLM)

    model.save_pretrained(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SpectrumError, match=f"checkpoint {tmp_path / 'truncated'}: cannot be read"):
        load_model(tmp_path / "truncated")

    model.save_pretrained(tmp_path / "noconfig")
    (tmp_path / "noconfig" / "config.json").unlink()
    with pytest.raises(SpectrumError, match="noconfig: cannot be read: config.json is missing"):
        load_model(tmp_path / "noconfig")


@pytest.mark.parametrize("i", [0, 1, 2], ids=["gpt_neox", "llama", "gpt2"])
def test_every_architecture_loads_strictly_without_complaint(tmp_path, i):
    model = _models()[i]
    model.save_pretrained(tmp_path / "ck")
    loaded = load_model(tmp_path / "ck")  # tied or untied heads: nothing missing or unexpected
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("key, change, says", [
    ("num_hidden_layers", 3, "12 weights of the model are missing from the checkpoint"),
    ("num_hidden_layers", 1, "12 weights of the checkpoint have no place in the model"),
    ("hidden_size", 64, "weights have other shapes than config.json implies "
                        "(gpt_neox.embed_in.weight: 300x32 in the file, 300x64 by config.json"),
    ("vocab_size", 400, "2 weights have other shapes than config.json implies"),
])
def test_a_config_that_does_not_fit_the_weights_is_refused(tmp_path, key, change, says):
    import json

    _models()[0].save_pretrained(tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    config[key] = change
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpectrumError) as e:
        load_model(tmp_path / "ck")
    [line] = e.value.problems
    assert line.startswith(f"checkpoint {tmp_path / 'ck'}: its weights do not fit its "
                           "config.json: ") and says in line, line


@pytest.mark.slow
def test_fused_cross_entropy_equals_the_eager_one(ids):
    model = _models()[0]
    eager = Evaluator(ids, fused=False)(model)
    fused = Evaluator(ids, fused=True, max_logit_elements=VOCAB * 50)(model)
    np.testing.assert_allclose(fused, eager, atol=1e-5)
    from spectrum.losses import evaluator as losses

    assert not losses._FUSED.get("broken")


@pytest.mark.gpu
def test_cuda_bf16_evaluator_within_the_stated_tolerance(ids):
    model = _models()[0]
    ref = _reference(model, ids)
    ours = token_losses(model.to("cuda", torch.bfloat16), ids.cuda())
    err = np.abs(ours - ref)
    assert err.max() < 0.25 and err.mean() < 0.05


def test_batch_size_backs_off_on_out_of_memory(ids, monkeypatch):
    """A device that fits at most 2 sequences at once: the evaluator halves its batch until it
    fits, keeps that size, and the losses are those of an unconstrained run."""
    from spectrum.losses import evaluator as losses

    model = _models()[0]
    expected = Evaluator(ids, batch_size=7)(model)
    real = losses.batch_losses
    tried = []

    def small_device(model, input_ids, **kw):
        tried.append(len(input_ids))
        if len(input_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(model, input_ids, **kw)

    monkeypatch.setattr(losses, "batch_losses", small_device)
    ev = Evaluator(ids, batch_size=7)
    np.testing.assert_array_equal(ev(model), expected)
    assert tried[:3] == [7, 3, 1] and ev.batch_size == 1  # halved: 7 -> 3 -> 1
    tried.clear()
    ev(model)
    assert set(tried) == {1}  # the size that fitted is remembered
