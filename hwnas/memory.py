"""Deterministic memory accounting: the bytes of tensors autograd saves for backward."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: list[torch.Tensor] = ()) -> int:
    """Run `fn` (a forward returning a loss) and count the bytes it saves for backward.

    Tensors are deduplicated by storage (views of one buffer count once), using
    `torch.autograd.graph.saved_tensors_hooks`; storages of `exclude` (e.g. parameters, which exist anyway)
    are not counted.
    """
    seen = {t.untyped_storage().data_ptr() for t in exclude}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
