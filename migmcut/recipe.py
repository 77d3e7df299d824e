"""Recipes: YAML files naming a base model and its sampler settings, validated strictly.

A recipe is resolved by built-in name (`tiny-shapes`, `debug`, ... shipped in
`migmcut.recipes`) or by path. Every key is checked against the dataclasses below: an unknown
key or a value of the wrong type is a `RecipeError` naming the key and the file. `--set a.b=v`
overrides are applied to the parsed YAML before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from migmcut.base import registry
from migmcut.errors import RecipeError, arg
from migmcut.policies import HybridConfig, MLCacheConfig, RecapConfig
from migmcut.sampler import SamplerConfig
from migmcut.train import TrainConfig


@dataclass
class GenerateConfig:
    batch_size: int = 16
    prompts: list[str] = field(default_factory=list)  # default prompts (bench, examples)


@dataclass
class ShortcutSection:
    """Recipe section `shortcut`: the checkpoint to generate with, and the architecture to train."""

    checkpoint: str | None = None  # a directory, or `builtin:NAME` for a shipped one
    budget: int | None = None  # full base steps per image at generation time
    ratio: int = 2  # bottleneck: D -> D / ratio
    n_block: int = 1
    heads: int = 4
    ffn_mult: int = 2
    cross_attention: bool = True
    mask_ratio_embedding: bool = True
    query_positions: bool = False  # lower val_mse, but see README: not what the shipped shortcut uses


@dataclass
class BenchConfig:
    """Recipe section `bench`: what `migmcut bench` runs by default, and where metric weights live."""

    steps: int | None = None  # N (default: sampler.steps)
    budgets: list[int] = field(default_factory=lambda: [4])
    methods: list[str] = field(default_factory=lambda: ["vanilla", "cache", "shortcut"])
    num_samples: int = 96
    batch_size: int | None = None  # default: generate.batch_size
    repeats: int = 3  # timed repeats per configuration (the median is reported)
    warmup: int = 1  # untimed runs before timing
    schedule: str = "auto"  # auto (as generate: searched where saved beside the shortcut) | uniform | searched | both
    metrics: list[str] = field(default_factory=list)  # default: by base kind (migmcut.metrics)
    prompts: str = "bench-set"  # bench-set | selection-set (tiny-shapes' shipped held-out sets) | recipe (generate.prompts) | a text file
    vanilla_steps: list[int] | None = None  # vanilla step counts for the front (default: N, every budget, then refined)
    bootstrap: int = 1000  # paired bootstrap resamples for the intervals (0: none)
    fid_inception: str | None = None  # TorchScript Inception file for `fid`
    fid_reference: str | None = None  # reference images (directory or .npz) for `fid`
    clip_model: str | None = None  # local transformers CLIP directory for `clip_score`


@dataclass
class Recipe:
    name: str
    base: typing.Any  # the adapter's config_class, picked by `base.kind` (migmcut.base.registry)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    shortcut: ShortcutSection = field(default_factory=ShortcutSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    recap: RecapConfig = field(default_factory=RecapConfig)  # method recap's knobs
    mlcache: MLCacheConfig = field(default_factory=MLCacheConfig)  # method mlcache's knobs
    hybrid: HybridConfig = field(default_factory=HybridConfig)  # method hybrid's knobs
    presets: dict[str, list[str]] = field(default_factory=dict)  # named operating points: `--set` overrides (--preset)
    description: str = ""
    source: str = ""  # where it was read from (not a YAML key)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("migmcut.recipes").iterdir() if p.name.endswith(".yaml"))


def as_recipe(recipe: Recipe | str) -> Recipe:
    """A Recipe as given, or the built-in recipe / YAML file it names."""
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def load_recipe(name_or_path: str, overrides: list[str] = (), preset: str | None = None) -> Recipe:
    """The recipe `name_or_path` names, with the overrides of its preset `preset` (an entry of its
    `presets`: e.g. the paper's operating points) and then `overrides` (`a.b=value`) applied."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise RecipeError(f"recipe {path} is a directory: give the path of a recipe YAML file, or one of "
                              f"{', '.join(builtin_names())}")
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        res = resources.files("migmcut.recipes") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise RecipeError(
                f"unknown recipe {name_or_path!r}: give a YAML path or one of {', '.join(builtin_names())}"
            )
        text, source = res.read_text(), f"recipe {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{source}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping, got {type(data).__name__}")
    if preset is not None:
        presets = data.get("presets") or {}
        if not isinstance(presets, dict) or preset not in presets:
            known = ", ".join(presets) if isinstance(presets, dict) and presets else "none"
            raise RecipeError(f"{arg('preset', preset)}: {source} has no such preset (its presets: {known})")
        overrides = [*_check(list[str], presets[preset], f"presets.{preset}", source), *overrides]
    for item in overrides:
        _apply_override(data, item)
    recipe = parse_recipe(data, source)
    return recipe


def parse_recipe(data: dict, source: str) -> Recipe:
    base = data.get("base")
    if not isinstance(base, dict) or "kind" not in base:
        raise RecipeError(f"{source}: 'base' must be a mapping with a 'kind' ({registry.known_kinds()})")
    try:
        adapter = registry.resolve(base["kind"])
    except RecipeError as err:
        raise RecipeError(f"{source}: {err.args[0]}") from None
    data = dict(data)
    data["base"] = _build(adapter.config_class, base, "base", source)
    recipe = _build(Recipe, data, "", source, skip={"base", "source"})
    recipe.source = source
    for section in ("sampler", "recap", "mlcache", "hybrid"):
        try:
            getattr(recipe, section).validate()
        except ValueError as err:
            raise RecipeError(f"{source}: {section}: {err}") from None
    return recipe


def _apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"{arg('overrides', repr(item))}: expected KEY=VALUE, e.g. {arg('overrides', 'sampler.steps=8')}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{arg('overrides', key)}: {part!r} is not a section")
    node[parts[-1]] = value


def _build(cls, data, prefix: str, source: str, skip: set = frozenset()):
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {prefix or 'recipe'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields or key == "source":
            known = ", ".join(f for f in fields if f != "source")
            raise RecipeError(f"{source}: unknown key {name!r} (known here: {known})")
        if key in skip:
            kwargs[key] = value
            continue
        kwargs[key] = _check(hints[key], value, name, source)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{source}: missing required key {', '.join((prefix + '.' if prefix else '') + m for m in missing)}")
    return cls(**kwargs)


def _check(tp, value, name: str, source: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name, source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, name, source)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {name} must be a mapping, got {value!r}")
        return {_check(key_type, k, name, source): _check(value_type, v, f"{name}.{k}", source) for k, v in value.items()}
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {name} must be a list, got {value!r}")
        items = [_check(item, v, f"{name}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise RecipeError(f"{source}: {name} must be {tp.__name__}, got {value!r}")
    return value
