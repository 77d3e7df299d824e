"""What `migmcut.attach` costs: a loop migmcut did not write, with the shortcut attached, against
migmcut's own sampler at the same (N, B), seconds per image, side by side in one process.

    OMP_NUM_THREADS=2 python benchmarks/attach_overhead.py --repeats 5

Two loops, each on tiny-shapes-sized work (16x16 tokens, 128-wide features, a batch of prompts):
- `amused`: diffusers' AmusedPipeline (output_type="latent") on a random-weight aMUSEd twin with
  16x16 tokens and 128-wide features (migmcut's `write_random_checkpoint`), hook on pipe.transformer,
  against `migmcut.sampler.sample` on the same base with the same shortcut (random weights: timing
  does not depend on them) and placement;
- `tiny-shapes`: the shipped tiny-shapes base and shortcut under a plain loop written here (CFG rows
  in one call of `base.mlm`), hook on `base.mlm`, against the sampler with the shipped shortcut.
Each repeat times the hooked loop and the sampler back to back (order alternating); the median of
the repeats is reported, with the unhooked loop against vanilla sampling as the loop's own
difference (the pipeline's scheduler is not migmcut's sampler). Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import migmcut
from migmcut.base import load_base
from migmcut.base.amused import write_random_checkpoint
from migmcut.base.tiny_shapes import IMAGE_OFFSET, MASK, NULL, tokenize_prompts
from migmcut.methods.shortcut import BudgetPolicy
from migmcut.policies import FullPolicy
from migmcut.recipe import load_recipe
from migmcut.sampler import sample
from migmcut.schedule import tokens_per_step
from migmcut.shortcut import Shortcut, ShortcutConfig, load_shortcut, resolve_checkpoint

WORDS = ["a", "red", "fox", "in", "snow", "blue", "car", "green", "tree"]
PROMPTS = ["a red fox in snow", "a blue car", "a green tree", "a fox in a car"]
TINY_PROMPTS = ["a large red circle", "a small blue square", "a large green triangle above a small red square"]


def amused_setup(folder: Path, steps: int, budget: int):
    from diffusers import AmusedPipeline, AmusedScheduler

    sets = write_random_checkpoint(folder, words=WORDS, sample_size=16, downsample=False, block_out_channels=128,
                                   encoder_hidden_size=32, max_length=16)
    recipe = load_recipe("amused-256", [f"{k}={v}" for k, v in sets.items()] + ["base.height=32", "base.width=32"])
    base = load_base(recipe.base)
    scheduler = AmusedScheduler.from_pretrained(base.cfg.model, subfolder="scheduler")
    pipe = AmusedPipeline(vqvae=base.vq, tokenizer=base.tokenizer, text_encoder=base.text_encoder,
                          transformer=base.transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    section = dataclasses.replace(recipe.shortcut, heads=4)
    shortcut = Shortcut(ShortcutConfig.from_recipe(section, base.feature_dim, base.condition_dim)).eval()
    config = dataclasses.replace(recipe.sampler, steps=steps)
    hook = migmcut.attach(pipe.transformer, shortcut, steps=steps, budget=budget, base=base)
    hook.remove()  # only its placement is needed here
    full = hook.full_steps
    n = len(PROMPTS)

    def loop(hooked: bool):
        gen = torch.Generator().manual_seed(0)
        if not hooked:
            return pipe(PROMPTS, num_inference_steps=steps, generator=gen, output_type="latent").images
        with migmcut.attach(pipe.transformer, shortcut, steps=steps, budget=budget, base=base):
            return pipe(PROMPTS, num_inference_steps=steps, generator=gen, output_type="latent").images

    def sampler(accelerated: bool):
        policy = BudgetPolicy(full, shortcut) if accelerated else FullPolicy()
        return sample(base, PROMPTS, list(range(n)), config, policy=policy).tokens

    return base.grid, n, full, loop, sampler


def tiny_setup(steps: int, budget: int, batch: int):
    recipe = load_recipe("tiny-shapes")
    base = load_base(recipe.base)
    checkpoint = resolve_checkpoint(recipe.shortcut.checkpoint)
    shortcut, _ = load_shortcut(checkpoint, base)
    config = dataclasses.replace(recipe.sampler, steps=steps)
    prompts = (TINY_PROMPTS * batch)[:batch]
    P, K, L = base.prompt_length, base.codebook_size, base.num_tokens
    cond = tokenize_prompts(prompts, P)
    prompt_ids = torch.cat([cond, torch.full_like(cond, NULL)])
    counts = tokens_per_step(L, steps, config.schedule)
    hook = migmcut.attach(base.mlm, shortcut, steps=steps, budget=budget, base=base)  # the module: uniform placement
    hook.remove()
    full = hook.full_steps  # what the hooked loop below places (the sampler is given the same)

    def plain(seeds):  # a user's loop: the recipe's settings by hand, CFG rows in one call
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        tokens = torch.full((batch, L), K)
        for t, k in enumerate(counts):
            u_tok = torch.stack([torch.rand(L, generator=g) for g in gens])
            u_conf = torch.stack([torch.rand(L, generator=g) for g in gens])
            image = torch.where(tokens == K, MASK, tokens + IMAGE_OFFSET)
            out = base.mlm(input_ids=torch.cat([prompt_ids, torch.cat([image, image])], 1)).logits
            lc, lu = out[:, P:, IMAGE_OFFSET : IMAGE_OFFSET + K].chunk(2)
            w = config.cfg_weight(t)
            where = (tokens == K).nonzero()[:, 1].view(batch, -1)
            logits = ((1 + w) * lc - w * lu).gather(1, where[..., None].expand(-1, -1, K))
            logp = logits.log_softmax(-1)
            cdf = logp.exp().cumsum(-1)
            cand = torch.searchsorted(cdf, (u_tok.gather(1, where) * cdf[..., -1])[..., None]).squeeze(-1).clamp(max=K - 1)
            noise = -torch.log((-torch.log(u_conf.gather(1, where).clamp(1e-20))).clamp(1e-20))
            conf = logp.gather(-1, cand[..., None]).squeeze(-1) + config.noise_scale(t) * noise
            pick = conf.topk(k, dim=-1).indices
            tokens = tokens.scatter(1, where.gather(1, pick), cand.gather(1, pick))
        return tokens

    def loop(hooked: bool):
        if not hooked:
            return plain(range(batch))
        with migmcut.attach(base.mlm, shortcut, steps=steps, budget=budget, base=base):
            return plain(range(batch))

    def sampler(accelerated: bool):
        policy = BudgetPolicy(full, shortcut) if accelerated else FullPolicy()
        return sample(base, prompts, list(range(batch)), config, policy=policy).tokens

    return base.grid, batch, full, loop, sampler


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def measure(name: str, setup, repeats: int, steps: int, budget: int) -> dict:
    grid, n, full, loop, sampler = setup
    same = torch.equal(loop(True).reshape(n, -1), sampler(True)) if name == "tiny-shapes" else None
    for warm in (True, False):  # one untimed pass of each
        loop(warm), sampler(warm)
    pairs = {"hooked": [], "shortcut": [], "loop": [], "vanilla": []}
    for r in range(repeats):
        order = [("hooked", loop, True), ("shortcut", sampler, True), ("loop", loop, False), ("vanilla", sampler, False)]
        for key, fn, arg in order if r % 2 == 0 else order[::-1]:
            pairs[key].append(timed(fn, arg) / n)
    med = {k: statistics.median(v) for k, v in pairs.items()}
    return {"loop": name, "grid": list(grid), "images": n, "steps": steps, "budget": budget, "full_steps": full,
            "repeats": repeats, "seconds_per_image": med,
            "hook_over_sampler": med["hooked"] / med["shortcut"],
            "loop_over_sampler_vanilla": med["loop"] / med["vanilla"],
            "tokens_equal_to_sampler": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="images per tiny-shapes call (amused: 4 prompts)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loops", default="amused,tiny-shapes")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for name in args.loops.split(","):
            setup = (amused_setup(Path(tmp) / "amused", args.steps, args.budget) if name == "amused"
                     else tiny_setup(args.steps, args.budget, args.batch))
            rows.append(measure(name, setup, args.repeats, args.steps, args.budget))
    print(f"{'loop':<12} {'N/B':>6} {'hooked s/img':>13} {'sampler s/img':>14} {'ratio':>7} "
          f"{'loop vanilla':>13} {'sampler vanilla':>16} {'ratio':>7}")
    for r in rows:
        s = r["seconds_per_image"]
        print(f"{r['loop']:<12} {r['steps']:>3}/{r['budget']:<2} {s['hooked']:>13.4f} {s['shortcut']:>14.4f} "
              f"{r['hook_over_sampler']:>7.3f} {s['loop']:>13.4f} {s['vanilla']:>16.4f} {r['loop_over_sampler_vanilla']:>7.3f}")
    print(json.dumps({"rows": rows, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
