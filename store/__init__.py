"""The Zarr trajectory store (see DESIGN.md section 6 and store/README.md).

    from migmcut.store import TrajectoryStore, PairDataset, collate_pairs, pair_loader
"""

import warnings as _warnings

# Stores recorded before the chains became Zarr v3 spec-only carry numcodecs' delta filter, which
# zarr-python reads but warns about on every open; new stores open without a warning.
_warnings.filterwarnings("ignore", message=r"Numcodecs codecs are not in the Zarr version 3 specification")
_warnings.filterwarnings("ignore", message=r".*does not have a Zarr V3 specification")

from migmcut.store.codecs import CODECS, decode, encode  # noqa: E402
from migmcut.store.reader import (  # noqa: E402
    PairDataset, RawTrajectory, TrajectoryStore, collate_pairs, pair_loader,
)
from migmcut.store.schema import StoreSpec  # noqa: E402

__all__ = [
    "CODECS", "encode", "decode", "StoreSpec", "TrajectoryStore", "RawTrajectory", "PairDataset",
    "collate_pairs", "pair_loader",
]
