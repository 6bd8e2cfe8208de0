"""Stage options: each stage declares its options once, as a frozen dataclass; the command line is
generated from those dataclasses.

A field is declared with :func:`option` (its default and help text travel in the field's
metadata); the flag is the field's name with dashes (``chunk_size`` -> ``--chunk-size``), its
type comes from the annotation (``int``, ``float``, ``str``, optionally ``| None``; a ``bool``
field is a switch that defaults to off), and a field without a default is a required option.

Options that several stages understand (``--device``, ``--force``, ``--executor``,
``--ray-address``, ``--num-gpus``, ``--workers``, ``--cpus-per-worker``) are declared here once
and reused by every stage that takes them, so a command that composes stages (``spectrum run``,
or a stage that runs others) adds each such flag once and hands the same value to every stage
that declares it. Where stages differ in a default, the shared option defaults to None, "each
stage's own" (``--executor``: see :func:`pipelines.executor.executor_kind`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", *,
           choices: tuple[str, ...] | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option."""
    return dataclasses.field(default=default,
                             metadata={"help": help, "choices": choices, "metavar": metavar})


# --- options shared between stages (one declaration each) --------------------------------------

def device_option() -> Any:
    return option("auto", "auto | cpu | cuda | cuda:N (default auto: a GPU when present; Ray "
                          "workers use CUDA when they are given GPUs)")


def force_option() -> Any:
    return option(False, "recompute even if the outputs are current")


def executor_option() -> Any:
    return option(None, "where the units of work run: local (this process) or ray (Ray workers: "
                        "a local Ray, or the cluster at --ray-address). Default: ray for the "
                        "losses stage; local for the fit and report stages, ray when "
                        "--ray-address is given", choices=("local", "ray"))


def ray_address_option() -> Any:
    return option(None, "the Ray cluster the Ray workers join (auto, ip:port); local or none: "
                        "start a local Ray. Given without --executor, it means --executor ray")


def num_gpus_option() -> Any:
    return option(None, "GPUs per Ray worker (default: 1 if GPUs exist, else 0)")


def workers_option() -> Any:
    return option(None, "Ray workers (default: as many as Ray holds: one per GPU for workers "
                        "with a GPU, else one per --cpus-per-worker CPUs)")


def cpus_per_worker_option() -> Any:
    return option(1, "CPUs per Ray worker, also the torch threads of a losses or fit worker on "
                     "Ray (default 1)")


SHARED = ("device", "force", "executor", "ray_address", "num_gpus")


# --- the command line --------------------------------------------------------------------------

def not_positive(values: Iterable[tuple[str, int | None]]) -> list[str]:
    """One sentence per (flag, value) whose value is given and below 1."""
    return [f"{flag} must be positive, got {value}" for flag, value in values
            if value is not None and value < 1]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> type:
    """``int | None`` -> ``int``; a plain type as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _declaration(field: dataclasses.Field, annotation: Any) -> tuple[Any, ...]:
    return (field.default, annotation, tuple(sorted(field.metadata.items())))


def add_options(parser: argparse.ArgumentParser, classes: Iterable[type]) -> None:
    """Add the fields of every options class in ``classes`` to ``parser``, each name once.

    Two classes that both declare a name must declare it alike (same default, type and help):
    that is what makes composing stages safe; anything else is a programming error.
    """
    seen: dict[str, tuple[Any, ...]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            declaration = _declaration(field, hints[field.name])
            if field.name in seen:
                if seen[field.name] != declaration:
                    raise TypeError(f"option {field.name} of {cls.__name__} is declared unlike "
                                    "the same option of another stage")
                continue
            seen[field.name] = declaration
            parser.add_argument(_flag(field.name), **_argument(field, hints[field.name]))


def _argument(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    meta = field.metadata
    kind = _value_type(annotation)
    required = field.default is dataclasses.MISSING
    help_text = meta.get("help", "")
    if kind is bool:
        return {"action": "store_true", "help": help_text}
    kwargs: dict[str, Any] = {"type": kind, "help": help_text}
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = field.default
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    if meta.get("metavar"):
        kwargs["metavar"] = meta["metavar"]
    return kwargs


def from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """The options of ``cls`` from parsed arguments (which may hold other stages' options too)."""
    values = vars(namespace)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def shared_with(cls: type[T], options: Any) -> T:
    """``cls`` with its defaults, except the shared options (:data:`SHARED`) that ``options``
    also declares: those take their values from ``options``."""
    given = {f.name for f in dataclasses.fields(options)}
    return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)
                  if f.name in SHARED and f.name in given})


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedOptions:
    """The options of a stage whose units of work run in this process or on Ray workers."""

    executor: str | None = executor_option()
    ray_address: str | None = ray_address_option()
    workers: int | None = workers_option()
    cpus_per_worker: int = cpus_per_worker_option()
