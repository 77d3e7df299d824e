"""Helpers shared by the store/record tests (no tests here)."""

from __future__ import annotations

import warnings

import numpy as np
import zarr

NUM, BLOCK, BATCH = 12, 4, 3


def contents(url) -> tuple[dict, dict]:
    """Everything a store holds, read with plain zarr: (group attrs, {array: (metadata, data)})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(url), mode="r")
        arrays = {}
        for name in sorted(g.array_keys()):
            a = g[name]
            arrays[name] = (a.metadata.to_dict(), a[:])
        return g.attrs.asdict(), arrays


def assert_same_store(a, b) -> None:
    attrs_a, arr_a = contents(a)
    attrs_b, arr_b = contents(b)
    assert attrs_a == attrs_b
    assert sorted(arr_a) == sorted(arr_b)
    for name in arr_a:
        meta_a, data_a = arr_a[name]
        meta_b, data_b = arr_b[name]
        assert str(meta_a) == str(meta_b), name
        assert data_a.dtype == data_b.dtype and np.array_equal(data_a, data_b, equal_nan=data_a.dtype.kind == "f"), name


class one_thread:
    """Run a block on one torch thread (conftest already does; kept for tests run on their own)."""

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)
