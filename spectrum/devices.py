"""Devices and dtypes, named the same way by every stage (``--device``, ``--dtype``)."""

from __future__ import annotations

import torch

from spectrum.errors import SpectrumError


DEVICES = "auto, cpu, cuda or cuda:N"


def parse_device(device: str, *, option: str = "--device") -> torch.device:
    """``device`` as a torch device, checked for its form only (``cpu``, ``cuda``, ``cuda:N``;
    ``auto`` is the CPU here): a device on another machine (a Ray worker) may exist there."""
    if device == "auto":
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise SpectrumError(f"{option} {device}: not a device (expected {DEVICES})")
    return parsed


def resolve_device(device: str = "auto", *, option: str = "--device") -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU. Any other name must be a
    device of this machine: ``cuda`` or ``cuda:N`` without that CUDA device is refused, naming
    ``option``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parsed = parse_device(device, option=option)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SpectrumError(f"{option} {device}: this machine has no CUDA device; "
                                "use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise SpectrumError(f"{option} {device}: this machine has {count} CUDA device(s), "
                                f"cuda:0 to cuda:{count - 1}")
    return parsed


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    names = {"float32": torch.float32, "fp32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in names:
        raise SpectrumError(f"unknown dtype {name!r} (expected float32, bfloat16 or float16)")
    return names[name]
