"""The bench plan: which configurations run (`configurations`), on which conditions and seeds.

    configs = configurations(16, [4, 6], ["vanilla", "cache", "shortcut:3/4/6"])
    plan = Plan(recipe.sampler, configs, expand(default_prompts(recipe), 384), sample_seeds(0, 384), 16)
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from migmcut.errors import UserError, arg
from migmcut.methods import get_method, method_names
from migmcut.metrics import MetricSettings
from migmcut.recipe import SamplerConfig
from migmcut.sampler import trajectory_seed
from migmcut.world import prompt_sets

SCHEDULE_MODES = ("auto", "uniform", "searched", "both")  # auto: as generate (searched where saved)


@dataclass
class Configuration:
    method: str
    steps: int  # sampling steps of this run
    budget: int  # full base steps
    full_steps: list[int] | None = None  # the steps that run the base (accelerated methods)
    schedule: str | None = None  # uniform | searched (the shortcut's placements: cache, shortcut, hybrid)
    reference: bool = False  # vanilla at N: the speedup reference
    knobs: dict | None = None  # the entry's own knob values (NAME@KNOB=V), over the recipe's section

    @property
    def adaptive(self) -> bool:
        """An adaptive method (`Method.adaptive`): `budget` is a cap (None: none), full steps differ per sample."""
        return get_method(self.method).adaptive

    @property
    def label(self) -> str:
        if self.method == "vanilla":
            return f"vanilla-{self.steps}"
        own = "" if not self.knobs else f" ({', '.join(f'{k}={v}' for k, v in self.knobs.items())})"
        if self.adaptive:
            return f"{self.method}-{self.steps}{'' if self.budget is None else f'/{self.budget}'}{own}"
        tag = "" if self.schedule in (None, "uniform") else f" ({self.schedule})"
        return f"{self.method}-{self.steps}/{self.budget}{tag}{own}"


def int_list(values: list[int], name: str) -> list[int]:
    """The integers of list parameter `name`; a string is refused (the CLI splits comma-separated text
    before it calls the library), and so is an empty list."""
    try:
        if isinstance(values, str):
            raise ValueError
        out = [int(v) for v in values if str(v).strip()]
    except ValueError:
        raise UserError(f"{arg(name, repr(values))}: expected a list of integers, e.g. [2, 4, 8]") from None
    if not out:
        raise UserError(f"{arg(name)} is empty: give at least one value")
    return out


def name_list(values: list[str], name: str) -> list[str]:
    """The names of list parameter `name`, stripped, blank ones dropped; a string is refused."""
    if isinstance(values, str):
        raise UserError(f"{arg(name, repr(values))}: expected a list of names, e.g. ['cache', 'shortcut']")
    return [m.strip() for m in values if m.strip()]


def split_entry(entry: str) -> tuple[str, list[int] | None, list[dict]]:
    """A methods entry NAME[:B1/B2][@KNOB=V1/V2]... -> (the method, its own budgets or None, its knob
    values: one dict per combination, [{}] without any), e.g. adaptive@threshold=0.8/0.9,
    adaptive-shortcut:6@signal=change@threshold=0.1/0.2. Knobs are checked by the method's section."""
    head, *knob_parts = entry.split("@")
    name, sep, own = head.partition(":")
    name = name.strip()
    if name not in method_names():
        raise UserError(f"unknown method {name!r}: choose from {', '.join(method_names())}")
    m = get_method(name)
    if sep and m.budget == "none":
        raise UserError(f"{arg('methods', entry)}: {name} takes no budgets (vanilla's step counts: {arg('vanilla_steps')})")
    mine = [int(b) for b in own.split("/")] if sep and all(b.strip().isdigit() for b in own.split("/")) else None
    if sep and mine is None:
        raise UserError(f"{arg('methods', repr(entry))}: expected NAME or NAME:B1/B2, e.g. shortcut:3/4/6")
    fields = [f.name for f in dataclasses.fields(m.knobs)] if m.knobs is not None else []
    choices = {}
    for part in knob_parts:
        key, eq, values = (x.strip() for x in part.partition("="))
        if key not in fields or not eq or not values:
            raise UserError(f"{arg('methods', repr(entry))}: expected @KNOB=V1/V2 with a knob of {name} "
                            f"({', '.join(fields) or 'it has none'}), e.g. adaptive@threshold=0.8/0.9")
        choices[key] = [yaml.safe_load(v) for v in values.split("/")]
    variants = [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]
    for over in variants:
        try:
            with_knobs(m.default_knobs(), over)
        except (ValueError, TypeError) as err:
            raise UserError(f"{arg('methods', repr(entry))}: {name}: {err}") from None
    return name, mine, variants


def with_knobs(knobs, over: dict | None):
    """A method's knobs with an entry's own values over them, checked (ValueError)."""
    if not over:
        return knobs
    knobs = dataclasses.replace(knobs, **over)
    knobs.validate()
    return knobs


def split_methods(methods: list[str], budgets: list[int]) -> dict[str, list[int]]:
    """Method entries -> {method: its budgets}: `name` takes `budgets`, `name:B1/B2` its own
    (e.g. shortcut:3/4/6); vanilla's are empty (its step counts are the front's), and so are an
    adaptive method's without its own (no cap: `Method.adaptive`)."""
    if not methods:
        raise UserError(f"{arg('methods')} is empty: choose from {', '.join(method_names())}")
    out: dict[str, list[int]] = {}
    for entry in methods:
        name, mine, _ = split_entry(entry)
        m = get_method(name)
        default = [] if m.adaptive else budgets
        out[name] = [] if m.budget == "none" else list(dict.fromkeys([*out.get(name, []), *(mine or default)]))
    return out


def method_knobs(methods: list[str]) -> dict[str, list[dict]]:
    """Method entries -> {method: the knob values its entries ask for ([{}]: the recipe's alone)}."""
    out: dict[str, list[dict]] = {}
    for entry in methods:
        name, _, variants = split_entry(entry)
        out[name] = out.get(name, []) + [v for v in variants if v not in out.get(name, [])]
    return out


def check_plan(steps: int, budgets: list[int], methods: list[str], schedule: str,
               vanilla_steps: list[int] | None = None) -> dict[str, list[int]]:
    """Every plan argument checked; -> `split_methods(methods, budgets)`."""
    if steps < 1:
        raise UserError(f"{arg('steps')} must be >= 1, got {steps}")
    plan = split_methods(methods, budgets)
    for b in sorted({b for bs in plan.values() for b in bs} | set(budgets)):
        if not 1 <= b <= steps:
            raise UserError(f"budget {b} must be between 1 and the step count ({steps})")
    for v in vanilla_steps or ():
        if not 1 <= v <= steps:
            raise UserError(f"{arg('vanilla_steps', v)} must be between 1 and the step count ({steps})")
    if schedule not in SCHEDULE_MODES:
        raise UserError(f"{arg('schedule', repr(schedule))}: choose {', '.join(SCHEDULE_MODES[:-1])} or {SCHEDULE_MODES[-1]}")
    return plan


def configurations(steps: int, budgets: list[int], methods: list[str], schedule: str = "uniform",
                   searched: dict[int, list[int]] | None = None,
                   vanilla_steps: list[int] | None = None, rounding: str = "half-up",
                   knobs: dict | None = None) -> list[Configuration]:
    """The bench plan: vanilla-N first, then vanilla at the other front step counts (default: every
    budget), then per budget each accelerated method of `methods` at (N, B), in `method_names()` order
    (an entry `name:B1/B2` runs that method at its own budgets instead of `budgets`).

    Vanilla runs whatever `methods` says: it is what every accelerated row is judged against.
    The methods that take a searched placement (`Method.searched`: the shortcut and the hybrid) take
    the `schedule` mode: auto the searched placement where `searched` has one for B (as generate
    does), the uniform one otherwise, which follows the sampler's `budget_rounding` as generate's
    does. The others place their full steps by their own rules (`Method.full_steps`, with `knobs`:
    method name -> its recipe section), uniform where they have none of their own.
    """
    plan = check_plan(steps, budgets, methods, schedule, vanilla_steps)
    variants = method_knobs(methods)
    adaptive = [m for m in method_names() if m in plan and get_method(m).adaptive]
    every = sorted({b for m, bs in plan.items() if m not in adaptive for b in bs}) or sorted(set(budgets))
    out = [Configuration("vanilla", steps, steps, reference=True)]
    out += [Configuration("vanilla", n, n) for n in sorted(set(vanilla_steps or every) - {steps})]

    def own_knobs(method: str, over: dict, what: str):
        try:
            return with_knobs((knobs or {}).get(method) or get_method(method).default_knobs(), over)
        except ValueError as err:
            raise UserError(f"{what}: {err}") from None

    for B in every:
        for method in (m for m in method_names() if B in plan.get(m, ()) and m not in adaptive):
            m = get_method(method)
            for over in variants[method]:
                mine = over or None
                if not m.searched:
                    try:
                        full = m.full_steps(steps, B, own_knobs(method, over, method), rounding)
                    except ValueError as err:
                        raise UserError(f"{arg('budgets', B)}: {err}") from None
                    out.append(Configuration(method, steps, B, full, None if m.own_placement else "uniform", knobs=mine))
                    continue
                found = (searched or {}).get(B)
                modes = {"both": ("uniform", "searched"), "auto": ("searched" if found else "uniform",)}.get(schedule, (schedule,))
                for mode in modes:
                    if mode == "uniform":
                        full = m.full_steps(steps, B, None, rounding)
                    elif found is None:
                        raise UserError(f"no searched schedule for N={steps}, B={B}: run migmcut schedule search")
                    else:
                        full = list(found)
                    out.append(Configuration(method, steps, B, full, mode, knobs=mine))
    for method in adaptive:  # per-sample full steps: a budget is a cap (none by default)
        m = get_method(method)
        for cap in plan[method] or [None]:
            for over in variants[method]:
                try:
                    m.full_steps(steps, cap, own_knobs(method, over, method), rounding)
                except ValueError as err:
                    raise UserError(f"{arg('methods', method)}: {err}") from None
                out.append(Configuration(method, steps, cap, knobs=over or None))
    return out


# --------------------------------------------------------------------------------- prompts


def read_prompts_file(path: str | Path) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{arg('prompts', path)}: no such file (give a text file with one prompt a line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{arg('prompts', path)}: unreadable ({err})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{arg('prompts', path)} holds no prompt: write one prompt a line")
    return prompts


def default_prompts(recipe) -> list[str]:
    """The recipe's bench prompts (`bench.prompts`): a shipped held-out set, the recipe's, or a file."""
    source = recipe.bench.prompts
    if source in ("bench-set", "selection-set"):
        if recipe.base.kind != "tiny-shapes":
            raise UserError(f"bench.prompts {source} is tiny-shapes' held-out set: pass {arg('prompts', 'FILE')} for {recipe.name}")
        return prompt_sets.load(source.removesuffix("-set"))
    if source != "recipe":
        return read_prompts_file(source)
    prompts = list(recipe.generate.prompts)
    if not prompts:
        raise UserError(f"recipe {recipe.name} has no default prompts: pass {arg('prompts', 'FILE')} or {arg('classes', 'IDS')}")
    return prompts


def expand(conditions: list, num_samples: int | None) -> list:
    """Cycle the conditions to `num_samples` (default: one sample each)."""
    if num_samples is None:
        return list(conditions)
    return [conditions[i % len(conditions)] for i in range(num_samples)]


@dataclass
class Plan:
    sampler: SamplerConfig  # the recipe's sampler with steps = N
    configs: list[Configuration]
    conditions: list
    seeds: list[int]
    batch_size: int
    repeats: int = 3
    warmup: int = 1
    bootstrap: int = 1000  # paired resamples for the intervals (0: none)
    refine: bool = True  # add vanilla step counts until each row's front vanilla is pinned
    level: float = 0.95
    knobs: dict = field(default_factory=dict)  # method name -> its recipe section (Recipe.knobs_for)


def metric_settings(recipe, device):
    """Where the recipe's bench section keeps the metrics' weights (local paths), for `device`."""
    cfg = recipe.bench
    return MetricSettings(fid_inception=cfg.fid_inception, fid_reference=cfg.fid_reference,
                          clip_model=cfg.clip_model, device=str(device))


def sample_seeds(run_seed: int, n: int) -> list[int]:
    return [trajectory_seed(run_seed, i) for i in range(n)]

