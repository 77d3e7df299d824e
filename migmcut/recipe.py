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

import torch

from migmcut.base import registry
from migmcut.base.conditions import Conditions
from migmcut.errors import RecipeError, UserError, arg
from migmcut.methods import get_method, knob_sections
from migmcut.placement import ROUNDINGS
from migmcut.schedule import SCHEDULES, tokens_per_step


# -- sampler ---------------------------------------------------------------------------------
CFG_SCHEDULES = ("linear", "linear-from-zero", "constant")
NOISE_SCHEDULES = ("linear", "linear-to-zero", "constant", "linspace", "cumulative")
TEMPERATURE_MODES = ("divide", "multiply")
CONFIDENCES = ("tempered", "untempered", "probability")
CFG_MIXES = ("weighted", "difference")
DRAWS = ("inverse-cdf", "multinomial")
TIMESTEPS = ("none", "countdown")


@dataclass
class SamplerConfig:
    steps: int = 16
    schedule: str = "cosine"
    temperature: float = 1.0
    r_temp: float = 4.5  # Gumbel confidence noise scale (at step 0 for the linear schedules)
    r_temp_end: float = 0.0  # the last step's noise scale under noise_schedule linspace
    cfg: float | None = 3.0  # None: no unconditional branch at all
    cfg_schedule: str = "linear"
    noise_schedule: str = "linear"
    temperature_mode: str = "divide"
    confidence: str = "tempered"
    cfg_mix: str = "weighted"
    draw: str = "inverse-cdf"
    budget_rounding: str = "half-up"
    timestep: str = "none"

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for name, known in (("schedule", SCHEDULES), ("cfg_schedule", CFG_SCHEDULES),
                            ("noise_schedule", NOISE_SCHEDULES), ("temperature_mode", TEMPERATURE_MODES),
                            ("confidence", CONFIDENCES), ("cfg_mix", CFG_MIXES), ("draw", DRAWS),
                            ("budget_rounding", ROUNDINGS), ("timestep", TIMESTEPS)):
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        if self.temperature < 0 or self.r_temp < 0 or self.r_temp_end < 0:
            raise ValueError("temperature, r_temp and r_temp_end must be >= 0")
        if self.temperature == 0 and self.temperature_mode == "multiply":
            raise ValueError("temperature 0 with temperature_mode multiply is a uniform softmax: "
                             "use temperature_mode divide for greedy decoding")

    def check(self, num_tokens: int) -> list[int]:
        """`validate()`, then the tokens fixed per step at `num_tokens` (ValueError where there are none)."""
        self.validate()
        return tokens_per_step(num_tokens, self.steps, self.schedule)

    @property
    def branches(self) -> int:
        return 1 if self.cfg is None else 2

    def cfg_weight(self, t: int) -> float:
        if self.cfg is None:
            return 0.0
        if self.cfg_schedule == "linear":
            return self.cfg * (t + 1) / self.steps
        if self.cfg_schedule == "linear-from-zero":
            return self.cfg * (t / max(self.steps - 1, 1))
        return self.cfg

    def noise_scale(self, t: int) -> float:
        if self.noise_schedule == "linear":
            return self.r_temp * (1 - t / self.steps)
        if self.noise_schedule == "linear-to-zero":
            return self.r_temp * (1 - t / max(self.steps - 1, 1))
        if self.noise_schedule == "linspace":  # float32, as AmusedScheduler.set_timesteps computes it
            return float(torch.linspace(self.r_temp, self.r_temp_end, self.steps)[t])
        if self.noise_schedule == "cumulative":  # MMaDA: temperature = temperature * (1.0 - ratio), each step
            scale = self.r_temp
            for s in range(t + 1):
                scale = scale * (1.0 - 1.0 * (s + 1) / self.steps)
            return scale
        return self.r_temp

    def step_conditions(self, cond: Conditions, t: int) -> Conditions:
        """The conditions step t hands the base: `cond`, plus the `timestep` row tensor N - 1 - t
        under `timestep: countdown`."""
        if self.timestep == "none":
            return cond
        some = next(iter(cond.tensors.values()))
        return Conditions(**cond.tensors, timestep=torch.full((len(cond),), float(self.steps - 1 - t), device=some.device))

    def behaviour(self) -> dict:
        """The settings that shape a trajectory, as a store compares them: settings without effect
        at these values (the temperature's semantics at 1, budget placement) are left out."""
        d = dataclasses.asdict(self)
        d.pop("budget_rounding")  # placement of full steps: generation only, never a recorded trajectory
        if self.temperature == 1:  # logits * 1 == logits / 1: the same softmax either way
            d.pop("temperature_mode")
            if self.confidence != "probability":  # log(softmax) is not log_softmax bit for bit
                d.pop("confidence")
        if self.noise_schedule != "linspace":
            d.pop("r_temp_end")
        if self.timestep == "none":  # a store recorded before the setting existed compares equal
            d.pop("timestep")
        return d


def sampler_behaviour(recorded: dict) -> dict:
    """`behaviour()` of a sampler section as a store recorded it; keys a store made before a setting
    existed are read as that setting's default (the sampler of that time)."""
    names = {f.name for f in dataclasses.fields(SamplerConfig)}
    return SamplerConfig(**{k: v for k, v in recorded.items() if k in names}).behaviour()


def behaviour_difference(recorded: dict, config: SamplerConfig) -> str | None:
    """The first setting in which a recorded sampler section behaves unlike `config`, or None."""
    mine, theirs = config.behaviour(), sampler_behaviour(recorded)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            return f"sampler.{key} {theirs.get(key)!r} (recipe: {mine.get(key)!r})"
    return None



# -- training --------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.999
    grad_clip: float = 1.0
    kl_weight: float = 0.0
    step_balance: float = 0.0  # alpha: each pair's MSE / (its cache MSE)^alpha (1: late steps count like early ones)
    unroll: int = 1  # chain this many shortcut steps from the recorded h_t, as at generation, and average their losses
    kl_temperature: float = 1.0
    online: bool = False  # on-policy pairs: roll the shortcut policy out, the base as teacher (migmcut.online)
    online_budgets: list[int] = field(default_factory=lambda: [3, 4, 6])  # full steps per rollout, in turn
    val_fraction: float = 0.05
    val_every: int = 500
    val_pairs: int = 4096
    checkpoint_every: int = 250
    num_workers: int = 0
    buffer: int = 32
    seed: int = 0

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "val_every", "checkpoint_every", "buffer", "unroll"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"{arg('lr')} must be > 0, got {self.lr}")
        if not 0 <= self.step_balance <= 1:
            raise UserError(f"train.step_balance must be in [0, 1], got {self.step_balance}")
        if not self.online_budgets or any(b < 1 for b in self.online_budgets):
            raise UserError(f"train.online_budgets must be a list of full-step counts >= 1, got {self.online_budgets}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")



@dataclass
class GenerateConfig:
    batch_size: int = 16
    prompts: list[str] = field(default_factory=list)  # default prompts (bench, examples)


@dataclass(kw_only=True)
class ShortcutArch:
    """migmcut's own shortcut network (`migmcut.shortcut.Shortcut`): the architecture a recipe's
    `shortcut` section asks for and a checkpoint's config.json records (with the base's widths)."""

    ratio: int = 2  # bottleneck: D -> D / ratio
    n_block: int = 1
    heads: int = 4
    ffn_mult: int = 2
    cross_attention: bool = True  # ablation switch: False drops the new-token cross-attention
    mask_ratio_embedding: bool = True  # ablation switch: False drops the r_t modulation
    attend_condition: bool = True  # also attend over the prompt tokens (text-conditioned bases)
    query_positions: bool = False  # the base's position embeddings added to the features it updates (see README)


@dataclass(kw_only=True)
class ShortcutSection(ShortcutArch):
    """Recipe section `shortcut`: the checkpoint to generate with and its budget, and the architecture to train."""

    checkpoint: str | None = None  # a directory, `builtin:NAME` for a shipped one, or a released .pth
    budget: int | None = None  # full base steps per image at generation time


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
    presets: dict[str, list[str]] = field(default_factory=dict)  # named operating points: `--set` overrides (--preset)
    description: str = ""
    source: str = ""  # where it was read from (not a YAML key)
    # the sections named after a method (`recap:`, `hybrid:` ...): its knobs (`migmcut.methods`), not a YAML key
    knobs: dict[str, typing.Any] = field(default_factory=dict)

    def knobs_for(self, method: str):
        """Method `method`'s knobs: the recipe's section, else the method's defaults (None: it has none)."""
        return self.knobs[method] if method in self.knobs else get_method(method).default_knobs()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source"), d.pop("knobs")
        return {**d, **{name: dataclasses.asdict(self.knobs_for(name)) for name in knob_sections()}}


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
    sections = knob_sections()  # a method's knobs are the section of its name, checked by its dataclass
    knobs = {name: _build(sections[name], data.pop(name), name, source) for name in list(data) if name in sections}
    recipe = _build(Recipe, data, "", source, skip={"base", "source", "knobs"}, also=tuple(sections))
    recipe.source, recipe.knobs = source, knobs
    for section, config in [("sampler", recipe.sampler), *knobs.items()]:
        try:
            config.validate()
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


def _build(cls, data, prefix: str, source: str, skip: set = frozenset(), also: tuple = ()):
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {prefix or 'recipe'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields or key in ("source", "knobs"):
            known = ", ".join([*(f for f in fields if f not in ("source", "knobs")), *also])
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
