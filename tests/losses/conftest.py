"""Fixtures of the losses tests.

- ``trainer_runs``: (session) three tiny runs written by Hugging Face's ``Trainer``
  (:mod:`tests.trainer_checkpoints`: GPT-2 tied, GPT-NeoX untied, Llama-style tied), six
  ``checkpoint-<step>/`` folders each at irregular steps, on the micro corpus. Read-only.
"""

from __future__ import annotations

import pytest

from tests.conftest import micro_corpus
from tests.trainer_checkpoints import TrainerRuns, write_trainer_runs


@pytest.fixture(scope="session")
def trainer_runs(tmp_path_factory) -> TrainerRuns:
    root = tmp_path_factory.mktemp("trainer_runs")
    return write_trainer_runs(root, micro_corpus(root / "corpus"))
