"""Rebuild the shipped tiny-shapes weights, seeded and resumable.

    python -m migmcut.world.build tokenizer    # VQ tokenizer      (~10 CPU-minutes)
    python -m migmcut.world.build base         # masked transformer (hours; resumable)
    python -m migmcut.world.build base --device cuda --workers 12 --batch-size 512 --minutes 5
    python -m migmcut.world.build classifier   # fd feature net     (minutes)

Each stage checkpoints to `--work` (default `runs/build/`) every few hundred steps and resumes
from there when run again; the final weights are written to `migmcut/weights/tiny-shapes/`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from migmcut.base import tiny_shapes as ts
from migmcut.world import shapes
from migmcut.world import tokenizer as tok
from migmcut.world.classifier import train_classifier

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny-shapes"


def render_batch(rng: np.random.Generator, specs: list, n: int) -> tuple[list[str], np.ndarray]:
    captions, images = zip(*(shapes.sample_scene(rng, specs) for _ in range(n)))
    return list(captions), np.stack(images)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def build_tokenizer(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    specs = shapes.all_specs()
    vq = tok.new_tokenizer()
    opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, weight_decay=0.0)
    ckpt = args.work / "tokenizer.pt"
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vq.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, rng = state["step"], state["rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed tokenizer at step {step}", flush=True)
    codebook = vq.quantize.embedding.weight
    usage = torch.zeros(codebook.shape[0])
    t0 = time.time()
    while step < args.steps:
        _, images = render_batch(rng, specs, args.batch_size)
        x = tok.to_tensor(images)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, 100)
        z = vq.encode(x).latents
        zq, commit, (_, _, idx) = vq.quantize(z)
        out = vq.decoder(vq.post_quant_conv(zq))
        rec = (out - x).pow(2).mean()
        loss = rec + commit.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage += torch.bincount(idx.flatten(), minlength=usage.numel())
        step += 1
        if step % 50 == 0:  # re-seed codes unused in the last window with live encoder outputs
            dead = (usage == 0).nonzero().flatten()
            if len(dead) and step < 0.8 * args.steps:
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                pick = torch.randint(len(flat), (len(dead),))
                with torch.no_grad():
                    codebook[dead] = flat[pick] + 0.01 * torch.randn_like(flat[pick])
            print(
                f"tokenizer step {step} rec {rec.item():.5f} used {(usage > 0).sum().item()} "
                f"reset {len(dead)} {time.time() - t0:.0f}s",
                flush=True,
            )
            usage.zero_()
        if step % 200 == 0 or step == args.steps:
            _save_state(
                ckpt,
                dict(model=vq.state_dict(), opt=opt.state_dict(), step=step, rng=rng,
                     torch_rng=torch.get_rng_state()),
            )
    vq.save_pretrained(WEIGHTS / "tokenizer")
    print(f"saved {WEIGHTS / 'tokenizer'}", flush=True)


class BaseBatches(torch.utils.data.Dataset):
    """Training batch `k` of the base, rendered on the CPU: a pure function of (seed, k).

    Indexing batches by step makes a run resumable at any step and identical for any number
    of loader workers. Half the batch are one-shape captions, half two-shape, all from the
    training split of the grammar; 10% of prompts are replaced by [NULL] (CFG); the mask ratio
    of each sample is cos(pi/2 u), u ~ U(0, 1) (MaskGIT).
    """

    def __init__(self, seed: int, batch_size: int, prompt_length: int, steps: int, num_tokens: int = 256):
        self.seed, self.B, self.P, self.steps, self.L = seed, batch_size, prompt_length, steps, num_tokens
        self.singles, self.pairs = shapes.split_specs(False, 1), shapes.split_specs(False, 2)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict:

        rng = np.random.default_rng([self.seed, step])
        B, L, half = self.B, self.L, self.B // 2
        caps1, im1 = render_batch(rng, self.singles, half)
        caps2, im2 = render_batch(rng, self.pairs, B - half)
        prompts = ts.tokenize_prompts(caps1 + caps2, self.P)
        prompts[torch.from_numpy(rng.random(B) < 0.1)] = ts.NULL
        ratio = torch.cos(0.5 * math.pi * torch.from_numpy(rng.random(B))).float()
        n_mask = (ratio * L).ceil().clamp(min=1).long()
        rank = torch.from_numpy(rng.random((B, L))).argsort(dim=1).argsort(dim=1)
        return {"images": torch.from_numpy(np.concatenate([im1, im2])), "prompts": prompts,
                "masked": rank < n_mask[:, None]}


def build_base(args) -> None:
    """Masked-token training of the tiny-shapes transformer on freshly rendered, tokenized scenes.

    Constant lr after warm-up with an EMA of the weights (the EMA is what ships), so a run can
    stop at any checkpoint (or after `--minutes`) and resume later. On CUDA the forward runs
    under bf16 autocast; the weights, the optimizer and the EMA stay fp32.
    """

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    vq = tok.VQModel.from_pretrained(WEIGHTS / "tokenizer").eval().requires_grad_(False).to(device)
    codebook = vq.config.num_vq_embeddings
    cfg = ts.bert_config(args.hidden, args.layers, args.heads, args.prompt_length, codebook)
    model = ts.BertForMaskedLM(cfg)
    ema = ts.BertForMaskedLM(cfg).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    model.to(device)
    ema.to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98),
    )
    ckpt = args.work / "base.pt"
    step, samples = 0, 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        samples = state.get("samples", step * 64)  # states written before `samples` was kept used batch 64
        print(f"resumed base at step {step} ({samples} samples)", flush=True)
    elif args.warm_start:  # no trainer state here: continue from the shipped EMA weights
        shipped = ts.BertForMaskedLM.from_pretrained(WEIGHTS / "base")
        model.load_state_dict(shipped.state_dict())
        ema.load_state_dict(shipped.state_dict())
        meta = json.loads((WEIGHTS / "base" / "training.json").read_text())
        step, samples = meta["step"], meta.get("samples", meta["step"] * meta["batch_size"])
        print(f"warm-started base from the shipped weights at step {step} (fresh optimizer state)", flush=True)
    print(f"base parameters {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M on {device}", flush=True)
    P, B = args.prompt_length, args.batch_size
    data = BaseBatches(args.seed, B, P, args.steps)
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=range(step, args.steps), num_workers=args.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if args.workers else None,
    )
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    pred = model.cls.predictions
    model_params, ema_params = list(model.parameters()), list(ema.parameters())
    deadline = time.time() + 60 * args.minutes if args.minutes else float("inf")
    t0, seen = time.time(), 0

    def export() -> None:
        _save_state(ckpt, dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                               step=step, samples=samples))
        ema.save_pretrained(args.export)
        meta = {"step": step, "samples": samples, "batch_size": B, "lr": args.lr, "seed": args.seed,
                "device": device.type}
        (args.export / "training.json").write_text(json.dumps(meta) + "\n")

    for batch in loader:
        prompts = batch["prompts"].to(device, non_blocking=True)
        masked = batch["masked"].to(device, non_blocking=True)
        image_tokens = tok.encode(vq, tok.to_tensor(batch["images"].to(device, non_blocking=True)))
        inputs = torch.cat([prompts, torch.where(masked, ts.MASK, image_tokens + ts.IMAGE_OFFSET)], 1)
        with autocast:
            hidden = model.bert(input_ids=inputs).last_hidden_state[:, P:]
            logits = torch.nn.functional.linear(
                pred.transform(hidden[masked]),
                pred.decoder.weight[ts.IMAGE_OFFSET:],
                pred.decoder.bias[ts.IMAGE_OFFSET:],
            )
        loss = torch.nn.functional.cross_entropy(logits.float(), image_tokens[masked])
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 300)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model_params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - d)
        step += 1
        seen += B
        samples += B
        if step % 25 == 0:
            acc = (logits.argmax(-1) == image_tokens[masked]).float().mean().item()
            print(
                f"base step {step} loss {loss.item():.4f} acc {acc:.3f} gnorm {gnorm:.2f} "
                f"{seen / (time.time() - t0):.1f} samples/s {time.time() - t0:.0f}s",
                flush=True,
            )
        if step % args.save_every == 0 or step == args.steps:
            export()
        if time.time() > deadline:
            print(f"--minutes {args.minutes} reached at step {step}", flush=True)
            if step % args.save_every:
                export()
            break
    print(f"saved {args.export} at step {step}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["tokenizer", "base", "classifier"])
    p.add_argument("--work", type=Path, default=Path("runs/build"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=12)
    p.add_argument("--device", default="cpu", help="base: cpu or cuda (bf16 autocast)")
    p.add_argument("--workers", type=int, default=0, help="base: scene-rendering loader processes")
    p.add_argument("--minutes", type=float, default=None, help="base: stop (and save) after this long")
    p.add_argument("--save-every", type=int, default=250, help="base: checkpoint and export every N steps")
    p.add_argument("--export", type=Path, default=WEIGHTS / "base", help="base: where the EMA weights go")
    p.add_argument("--warm-start", action="store_true",
                   help="base: without a checkpoint in --work, continue from the shipped weights")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    defaults = {
        "tokenizer": dict(steps=400, batch_size=32, lr=1e-3),
        "base": dict(steps=20000, batch_size=64, lr=1e-3),
        "classifier": dict(steps=1500, batch_size=64, lr=2e-3),
    }[args.stage]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.stage == "classifier":

        torch.set_num_threads(1)  # the shipped weights were made on one thread
        train_classifier(args.work, args.seed, args.steps, args.batch_size, args.lr, WEIGHTS / "classifier")
        return
    {"tokenizer": build_tokenizer, "base": build_base}[args.stage](args)


if __name__ == "__main__":
    main()
