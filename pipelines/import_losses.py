"""``spectrum import-losses``: per-token losses computed elsewhere become loss shards with
provenance, so that ``spectrum fit`` and ``spectrum report`` run on them (see
:mod:`spectrum.losses.importer` for the mapping and the formats). Every input is checked before
anything is written; each problem is one line naming the file."""

from __future__ import annotations

import dataclasses
import logging

from pipelines.options import option
from spectrum.manifest import Manifest

HELP = ("import per-token losses computed elsewhere (.npy/.npz tokens x checkpoints, long or "
        "wide Parquet) as loss shards, with their evalset")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportLossesOptions:
    mapping: str = option(help="YAML naming each run's file, its steps and the evalset's token "
                               "ids (see the README)", metavar="MAPPING")
    force: bool = option(False, "replace an evalset, or shards of steps the import lacks, that "
                                "differ from the import")


OPTIONS = ImportLossesOptions


def main(manifest: Manifest, options: ImportLossesOptions) -> None:
    from spectrum.losses.importer import plan_import, read_mapping, write_import  # numpy: not for --help

    mapping = read_mapping(options.mapping)
    plan = plan_import(manifest, mapping, force=options.force)
    written = write_import(manifest, plan, force=options.force)
    log.info(f"import-losses: {written} shards of {len(plan.steps)} runs "
             f"({plan.n_tokens} tokens each) -> {manifest.out}; evalset "
             f"{'written' if plan.evalset is not None else 'kept'}; next: `spectrum fit` and "
             "`spectrum report` (not `spectrum run`, which would redraw the evalset)")
