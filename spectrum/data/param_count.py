"""M for ``params: auto``: the non-embedding parameters of a model, counted from its config.json.

The convention (:data:`CONVENTION`) is that of Kaplan et al. (2020) and of Pythia's own tables:
every parameter of the model except the token embedding, learned position embeddings and the
output projection (the unembedding); where the input and output matrices are tied, the shared
matrix is left out once. Layer norms and biases count. For Pythia this reproduces the published
non-embedding counts exactly (18,915,328 for pythia-70m).

GPT-NeoX configs (Pythia, PolyPythias, the built-in suite) are counted by arithmetic on the
config's sizes, which needs neither torch nor transformers, so a manifest with ``params: auto``
still loads in milliseconds. Any other architecture is built by transformers on the meta device
(no memory for weights, nothing downloaded) and its parameters are summed.

The config is the first checkpoint's (lowest step) ``config.json``: in a checkpoint folder, or
of a hub revision in the local Hugging Face cache (read offline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONVENTION = ("M is the number of non-embedding parameters: every parameter except the token "
              "embedding, learned position embeddings and the output projection (a matrix tied "
              "between input and output left out once), the convention of Kaplan et al. (2020) "
              "and of Pythia's tables")


class CountError(ValueError):
    """The parameters cannot be counted; the message says why."""


def gpt_neox_params(config: dict[str, Any]) -> int:
    """Non-embedding parameters of a GPT-NeoX model from its config (rotary positions hold no
    parameters): per layer two layer norms, the fused query-key-value projection and the
    attention output (with biases unless ``attention_bias`` is false) and the two MLP matrices
    with their biases; then the final layer norm."""
    try:
        d = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        inner = int(config.get("intermediate_size") or 4 * d)
    except (KeyError, TypeError, ValueError) as e:
        raise CountError(f"the GPT-NeoX config lacks {e}") from None
    bias = bool(config.get("attention_bias", True))
    norms = 2 * (2 * d)
    attention = 4 * d * d + (4 * d if bias else 0)
    mlp = 2 * d * inner + inner + d
    return layers * (norms + attention + mlp) + 2 * d


def meta_device_params(config: dict[str, Any]) -> int:
    """Non-embedding parameters of any transformers causal LM, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kind = config.get("model_type")
    try:
        cfg = AutoConfig.for_model(kind, **{k: v for k, v in config.items()
                                            if k not in ("model_type", "transformers_version")})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception as e:  # noqa: BLE001 - any failure of transformers is a reason to report
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CountError(f"transformers cannot build a model_type {kind!r} from it ({first})") \
            from None
    excluded = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                for p in m.parameters()}
    out = model.get_output_embeddings()
    if out is not None:
        excluded |= {id(p) for p in out.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def non_embedding_params(config: dict[str, Any]) -> int:
    """M of the model ``config`` describes (see the module doc for the convention)."""
    if config.get("model_type") == "gpt_neox":
        return gpt_neox_params(config)
    return meta_device_params(config)


def first_config(source: Any, steps: tuple[int, ...] | None) -> Path:
    """The config.json of the lowest-step checkpoint of ``source`` (a folder, or a manifest's
    ``HubSource``; among ``steps`` when given)
    that is available here; :class:`CountError` saying why when there is none."""
    from spectrum.data.checkpoint_names import checkpoint_folders, revision_step

    wanted = set(steps) if steps is not None else None
    if not isinstance(source, (str, Path)):  # a HubSource: the manifest is not imported here
        from huggingface_hub import try_to_load_from_cache

        steps = ((revision_step(r), r) for r in source.revisions)
        revisions = sorted((s, r) for s, r in steps
                           if s is not None and (wanted is None or s in wanted))
        for _, rev in revisions:
            found = try_to_load_from_cache(source.repo, "config.json", revision=rev,
                                           cache_dir=str(source.cache_dir) if source.cache_dir
                                           else None)
            if isinstance(found, str):
                return Path(found)
        raise CountError(f"no revision of {source.repo} listed here is in the local Hugging "
                         "Face cache yet")
    for step, folder in checkpoint_folders(Path(source)):
        if (wanted is None or step in wanted) and (folder / "config.json").is_file():
            return folder / "config.json"
    raise CountError(f"folder {source} holds no checkpoint with a config.json yet")


def count_from(config_path: Path) -> int:
    """M counted from one config.json."""
    try:
        config = json.loads(Path(config_path).read_text())
    except (OSError, ValueError) as e:
        raise CountError(f"{config_path} cannot be read ({e})") from None
    if not isinstance(config, dict):
        raise CountError(f"{config_path} is not a JSON object")
    return non_embedding_params(config)
