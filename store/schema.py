"""The store schema: attrs, arrays, chunking and codecs (see store/README.md for the prose).

A `StoreSpec` is everything that defines a store: it is written once, as the group attribute
`migmcut`, by whoever creates the store, and read back by writers that resume, by the reader
and by `store info/verify`. `identity()` is the part that must match for a run to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import zarr
from migmcut.store import location
from migmcut.store.codecs import CODECS, DEFAULT_TOLERANCE, check_tolerance, get_codec
from migmcut.store.location import Location, zarr_store
from zarr import Array
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.errors import GroupNotFoundError

from migmcut.errors import StoreError
from migmcut.recipe import sampler_behaviour

FORMAT = "migmcut-trajectories"
SCHEMA_VERSION = 1
ATTR = "migmcut"
DEFAULT_BLOCK_SIZE = 16
CHUNK_TARGET_BYTES = 16 << 20  # a feature chunk holds as many steps as fit (raw) in this
FEATURE_ZSTD_LEVEL = 1  # measured: level 3 saves ~2-4 % more at 60 % of the speed
SMALL_ZSTD_LEVEL = 3
DELTA_BLOSC_BLOCK = 1 << 20  # measured: 1 MiB blosc blocks code delta levels ~2 % smaller than blosc's default
# Compressed/raw size of the feature payload, measured on the shipped tiny-shapes model (trained
# weights, benchmarks/bench_store.py) with the codecs below; used only by `record --dry-run` to
# estimate a store's size. delta: bits per value against the tolerance (interpolated in log tolerance).
ESTIMATED_RATIO = {"bf16": 0.66, "fp16": 0.66, "int8": 0.81}
ESTIMATED_DELTA_BITS = ((0.0289, 3.13), (0.0577, 2.32), (0.1, 1.78), (0.144, 1.50))

CONDITION_ARRAYS = {"prompts": "string", "labels": "int32"}


@dataclass
class StoreSpec:
    num: int  # trajectories
    steps: int
    branches: int  # 2 with CFG (0 conditional, 1 unconditional), else 1
    num_tokens: int  # L
    feature_dim: int  # D
    codec: str
    seed: int  # run seed: trajectory i has seed trajectory_seed(seed, i)
    fingerprint: str  # of the base model
    recipe: dict  # resolved recipe (sampler.steps is the recorded step count)
    condition: str = "prompts"  # "prompts" (strings) or "labels" (ints)
    condition_source: str = ""  # which deterministic draw made the conditions
    codebook_size: int = 0
    compute_dtype: str = "float32"
    block_size: int = DEFAULT_BLOCK_SIZE
    chunk_steps: int = 0  # 0: choose automatically
    tolerance: float | None = None  # delta codec: RMS error / RMS of the features (None for the others)
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        get_codec(self.codec)
        if self.codec == "delta":
            self.tolerance = check_tolerance(DEFAULT_TOLERANCE if self.tolerance is None else self.tolerance)
        else:
            self.tolerance = None
        if self.condition not in CONDITION_ARRAYS:
            raise StoreError(f"unknown condition kind {self.condition!r}")
        if self.chunk_steps <= 0:
            self.chunk_steps = auto_chunk_steps(self.steps, self.num_tokens * self.feature_dim * CODECS[self.codec].itemsize)
        if self.steps % self.chunk_steps:
            raise StoreError(f"chunk_steps {self.chunk_steps} must divide the step count {self.steps}")

    # -- attrs -----------------------------------------------------------------------------
    @property
    def sampler(self) -> dict:
        return dict(self.recipe.get("sampler", {}))

    def attrs(self) -> dict:
        d = dataclasses.asdict(self)
        d["sampler"] = self.sampler
        d["num_blocks"] = self.num_blocks
        return json.loads(json.dumps(d))  # plain JSON types, as zarr will store them

    @classmethod
    def from_attrs(cls, attrs: dict) -> "StoreSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    def identity(self) -> dict:
        """What must match for a run to add to (resume) an existing store. The sampler counts by
        its behaviour: a setting a store predates reads as its default, one without effect is left out."""

        recipe = {k: v for k, v in self.recipe.items() if k in ("name", "base")}
        recipe["sampler"] = sampler_behaviour(self.sampler)
        return {
            "schema_version": self.schema_version,
            "fingerprint": self.fingerprint,
            "recipe": json.loads(json.dumps(recipe)),
            "codec": self.codec,
            "tolerance": self.tolerance,
            "steps": self.steps,
            "num": self.num,
            "seed": self.seed,
            "compute_dtype": self.compute_dtype,
            "condition_source": self.condition_source,
        }

    def differences(self, other: "StoreSpec") -> list[str]:
        mine, theirs = self.identity(), other.identity()
        out = []
        for key in mine:
            if key == "tolerance" and mine["codec"] != theirs["codec"]:
                continue  # the codec's difference says it
            if mine[key] != theirs[key]:
                if key == "recipe":
                    out.append(f"recipe {_recipe_diff(mine[key], theirs[key])}")
                else:
                    out.append(f"{key} {theirs[key]!r} (this run: {mine[key]!r})")
        return out

    # -- layout ----------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return -(-self.num // self.block_size)

    def block_range(self, block: int) -> range:
        return range(block * self.block_size, min(self.num, (block + 1) * self.block_size))

    def arrays(self) -> list["ArrayDef"]:

        n, B, N, L, D, S = self.num, self.branches, self.steps, self.num_tokens, self.feature_dim, self.block_size
        c = get_codec(self.codec)
        k = self.chunk_steps
        small = dict(compressors=[ZstdCodec(level=SMALL_ZSTD_LEVEL), Crc32cCodec()])
        # Only Zarr v3 specification codecs (transpose, bytes, blosc, zstd, crc32c) in any chain:
        # whatever a codec transforms (int8's scaling, delta's step differences) happens before zarr.
        step_inner = [TransposeCodec(order=(0, 1, 3, 4, 2))]
        if c.name == "fp16":  # byte-shuffled blosc-zstd
            feat_filters = step_inner
            feat_comp = [BloscCodec(cname="zstd", clevel=FEATURE_ZSTD_LEVEL + 2, shuffle="shuffle", typesize=2), Crc32cCodec()]
        elif c.name == "bf16":
            feat_filters = step_inner
            feat_comp = [BloscCodec(cname="zstd", clevel=FEATURE_ZSTD_LEVEL, shuffle="bitshuffle", typesize=2), Crc32cCodec()]
        elif c.name == "int8":
            feat_filters = step_inner
            feat_comp = [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=1), Crc32cCodec()]
        else:  # delta: channels innermost (as stored), bit planes of the zigzag differences
            feat_filters = []
            feat_comp = [BloscCodec(cname="zstd", clevel=FEATURE_ZSTD_LEVEL, shuffle="bitshuffle", typesize=4,
                                    blocksize=DELTA_BLOSC_BLOCK), Crc32cCodec()]
        defs = [
            ArrayDef(
                "features", (n, B, N, L, D), c.dtype, (1, 1, k, L, D), (1, B, N, L, D), c.fill,
                feat_filters, feat_comp, ("trajectory", "branch", "step", "position", "channel"),
                {"logical_dtype": c.logical_dtype, "codec": c.name,
                 **({"tolerance": self.tolerance} if self.tolerance is not None else {})},
            )
        ]
        if c.name == "int8":
            defs.append(ArrayDef(
                "feature_scale", (n, B, N, L), "float32", (1, 1, k, L), (1, B, N, L), float("nan"),
                [TransposeCodec(order=(0, 1, 3, 2))],
                [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4), Crc32cCodec()],
                ("trajectory", "branch", "step", "position"),
                {"meaning": "per-token absmax: value = features * feature_scale / 127"},
            ))
        elif c.name == "delta":
            defs.append(ArrayDef(
                "feature_step", (n, B), "float32", (S, B), None, float("nan"), [], small["compressors"],
                ("trajectory", "branch"),
                {"meaning": "quantization step s: value = s * cumsum over steps of unzigzag(features)"},
            ))
        cond_dtype = CONDITION_ARRAYS[self.condition]
        defs += [
            ArrayDef("tokens", (n, L), "int32", (S, L), None, -1, [], small["compressors"], ("trajectory", "position")),
            ArrayDef("order", (n, L), "int16", (S, L), None, -1, [], small["compressors"], ("trajectory", "position"),
                     {"meaning": "step at which each position was fixed"}),
            ArrayDef(self.condition, (n,), cond_dtype, (S,), None, "" if cond_dtype == "string" else -1, [],
                     small["compressors"], ("trajectory",)),
            ArrayDef("seeds", (n,), "uint32", (S,), None, 0, [], small["compressors"], ("trajectory",)),
            ArrayDef("complete", (n,), "bool", (S,), None, False, [], small["compressors"], ("trajectory",),
                     {"meaning": "true once every array of the trajectory is durably written"}),
        ]
        return defs

    # -- sizes -----------------------------------------------------------------------------
    def raw_feature_bytes(self, codec: str | None = None) -> int:
        """Uncompressed bytes of one trajectory's features in a codec (fp32 with codec='fp32')."""
        per = self.branches * self.steps * self.num_tokens
        if codec == "fp32":
            return per * self.feature_dim * 4
        c = get_codec(codec or self.codec)
        side = {"int8": per * 4, "delta": self.branches * 4}.get(c.name, 0)
        return per * self.feature_dim * c.itemsize + side

    def estimated_feature_bytes(self, codec: str | None = None, tolerance: float | None = None) -> int:
        """Estimated stored bytes of one trajectory's features in a codec (measured ratios, see above)."""
        codec = codec or self.codec
        raw = self.raw_feature_bytes(codec)
        if codec != "delta":
            return int(raw * ESTIMATED_RATIO[codec])
        tol = tolerance if tolerance is not None else (self.tolerance or DEFAULT_TOLERANCE)
        values = self.branches * self.steps * self.num_tokens * self.feature_dim
        return int(values * estimated_delta_bits(tol) / 8) + self.branches * 4

    def estimate_bytes(self) -> dict:
        per_traj = self.raw_feature_bytes()
        small = self.num_tokens * (4 + 2) + 4 + 1 + (48 if self.condition == "prompts" else 4)
        est = self.estimated_feature_bytes() + small // 2
        return {
            "raw_per_trajectory": per_traj + small,
            "estimated_per_trajectory": est,
            "raw_total": (per_traj + small) * self.num,
            "estimated_total": est * self.num,
            "fp32_per_trajectory": self.raw_feature_bytes("fp32"),
        }


@dataclass
class ArrayDef:
    name: str
    shape: tuple
    dtype: str
    chunks: tuple
    shards: tuple | None
    fill: object
    filters: list
    compressors: list
    dims: tuple
    attrs: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "chunks": list(self.chunks),
                "shards": list(self.shards) if self.shards else None}


def auto_chunk_steps(steps: int, step_bytes: int) -> int:
    """Largest divisor of `steps` whose chunk stays under CHUNK_TARGET_BYTES (at least 1)."""
    best = 1
    for k in range(1, steps + 1):
        if steps % k == 0 and k * step_bytes <= CHUNK_TARGET_BYTES:
            best = k
    return best


def estimated_delta_bits(tolerance: float) -> float:
    """Bits per stored value of the delta codec at a tolerance: the measured points, interpolated in
    log tolerance; beyond them one bit per halving of the step (as for a finer uniform grid) below,
    the last slope (at least 0.2 bits) above."""
    logt, bits = np.log2([t for t, _ in ESTIMATED_DELTA_BITS]), [b for _, b in ESTIMATED_DELTA_BITS]
    x = math.log2(tolerance)
    if x < logt[0]:
        return bits[0] + (logt[0] - x)
    if x > logt[-1]:
        return max(0.2, bits[-1] + (bits[-1] - bits[-2]) / (logt[-1] - logt[-2]) * (x - logt[-1]))
    return float(np.interp(x, logt, bits))


def _recipe_diff(a: dict, b: dict, prefix: str = "") -> str:
    """First differing key between two nested dicts: 'base.hidden_size 32 (this run: 64)'."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va != vb:
            name = f"{prefix}{key}"
            if isinstance(va, dict) and isinstance(vb, dict):
                return _recipe_diff(va, vb, name + ".")
            return f"{name} {vb!r} (this run: {va!r})"
    return "(same)"


# -- opening ------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """Stores recorded before schema 1's chains became spec-only carry numcodecs' delta filter, which
    zarr warns about on every open; stores recorded now open without a warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"zarr(\..*)?")
        warnings.filterwarnings("ignore", message=r".*(umcodecs|Zarr V3|zarr v3).*")
        yield


def open_group(loc: Location, mode: str = "r"):

    with quiet():
        return zarr.open_group(zarr_store(loc, read_only=mode == "r"), mode=mode)


def open_arrays(group, spec: StoreSpec, loc: Location, problems: list[str] | None = None) -> dict:
    """The store's arrays that `spec` defines and that exist: {name: zarr array}, their metadata read
    once. The one place array metadata is read: an unreadable `NAME/zarr.json` (damaged, truncated,
    not an array's) is a StoreError naming it (or, given `problems`, a line added there and the array
    left out). An array without its zarr.json is missing (not in the dict), as zarr sees it."""

    arrays = {}
    for a in spec.arrays():
        key = f"{a.name}/zarr.json"
        try:
            if not sync(group.store.exists(key)):
                continue
            with quiet():
                array = group[a.name]
            if not isinstance(array, Array):
                raise ValueError("not an array's metadata")
        except Exception as err:  # noqa: BLE001 - whatever zarr makes of damaged metadata
            text = f"metadata file {key} is unreadable ({type(err).__name__}: {_first_line(err)})"
            if problems is None:
                raise StoreError(f"{loc}: {text}; the store is damaged: record it again with `migmcut record "
                                 "--overwrite` (or restore the file)") from None
            problems.append(text)
            continue
        arrays[a.name] = array
    return arrays


def _first_line(err: Exception, limit: int = 120) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:limit]


def read_spec(loc: Location, group=None) -> tuple[object, StoreSpec]:
    """Open an existing store: (group, spec). StoreError when it is missing or not a migmcut store."""


    if not location.exists(loc):
        raise StoreError(f"{loc}: no such store (record one with `migmcut record --out {loc}`)")
    try:
        group = group if group is not None else open_group(loc, "r")
    except (GroupNotFoundError, FileNotFoundError, NotADirectoryError):
        raise StoreError(f"{loc}: not a migmcut trajectory store (no zarr group there)") from None
    except (ValueError, KeyError, OSError) as err:
        raise StoreError(f"{loc}: not a readable zarr group ({type(err).__name__}: {err})") from None
    attrs = group.attrs.asdict().get(ATTR)
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
        raise StoreError(f"{loc}: a zarr group, but not a migmcut trajectory store (no '{ATTR}' attributes)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{loc}: store schema version {attrs.get('schema_version')} is not supported "
            f"(this migmcut reads version {SCHEMA_VERSION}); re-record it"
        )
    try:
        spec = StoreSpec.from_attrs(attrs)
    except (TypeError, StoreError) as err:
        raise StoreError(f"{loc}: damaged '{ATTR}' attributes ({err})") from None
    return group, spec
