"""Per-token passes of the report as a map over token ranges followed by a sum.

A *pass* reads some per-token columns of one or more runs and accumulates aggregates that are sums
over tokens (per-sequence bin sums of a spectrum, per-sequence sums of predicted curves, per-run
population sums of the token models). It is a small picklable object that holds what it needs to
read the tokens (runs without their loss sums, :meth:`RunData.light`) and its settings, never
per-token data:

- ``pass_(start, stop)``: the partial aggregates of the tokens ``start <= token_idx < stop``
  (read by the pass itself, in chunks of the runs' chunk size);
- ``pass_.combine(parts)``: the aggregates of every token from the partials of consecutive ranges
  that cover ``0 .. n_tokens - 1``, in token order.

A *mapper* runs a list of passes and returns each one's combined aggregates: :func:`in_process`
runs each pass over one range holding every token (in this process); a pipeline may instead cut
the tokens into ranges and send (pass, range) units to workers. The aggregates are sums, so the
two differ only by the order of additions (about 1e-12 relative, not bitwise).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence


class TokenPass(Protocol):
    n_tokens: int

    def __call__(self, start: int, stop: int) -> Any: ...

    def combine(self, parts: Sequence[Any]) -> Any: ...


Mapper = Callable[[Sequence[TokenPass]], list[Any]]


def in_process(passes: Sequence[TokenPass]) -> list[Any]:
    """Each pass over all its tokens at once, in this process."""
    return [p.combine([p(0, p.n_tokens)]) for p in passes]


def token_ranges(n_tokens: int, size: int) -> list[tuple[int, int]]:
    """Consecutive ranges of ``size`` tokens (the last shorter) covering ``0 .. n_tokens - 1``."""
    size = max(1, int(size))
    return [(a, min(a + size, n_tokens)) for a in range(0, max(n_tokens, 1), size)]
