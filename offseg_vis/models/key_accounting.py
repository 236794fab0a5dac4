"""Strict key accounting shared by every checkpoint loader: what does not fit, in one sentence."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def misfit_parts(
    source: Mapping[str, object],
    target: Mapping[str, object],
    may_be_missing: Callable[[str], bool] = lambda key: False,
    examples: int = 3,
) -> list[str]:
    """Problems of loading ``source`` into ``target`` (values: tensors or shapes); [] when it fits.

    Lists unknown keys (in source only), missing keys (in target only, unless ``may_be_missing``)
    and shape mismatches, each with a count and the first ``examples`` offenders.
    """
    unknown = sorted(k for k in source if k not in target)
    missing = sorted(k for k in target if k not in source and not may_be_missing(k))
    mismatched = sorted(
        f"{k}: checkpoint {_shape(source[k])} vs model {_shape(target[k])}"
        for k in source
        if k in target and _shape(source[k]) != _shape(target[k])
    )
    parts = []
    for what, keys in (("unknown keys", unknown), ("keys missing", missing), ("shape mismatches", mismatched)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {'; '.join(_first(keys, examples))})")
    return parts


def _first(keys: Iterable[str], n: int) -> list[str]:
    return list(keys)[:n]
