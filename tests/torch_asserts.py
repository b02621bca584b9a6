"""Assertions shared by the bridge tests (a helper module, not a test module)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def assert_identical(a, b, where: str = "") -> None:
    """Recursively identical: same types, keys in the same order, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype)
        assert torch.equal(a, b), where
        assert a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes(), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping), where
        assert type(a) is type(b), (where, type(a), type(b))
        assert list(a) == list(b), (where, list(a), list(b))
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (where, a, b)
