"""Full-size MaskGIT and Lumina-DiMOO with random weights on one GPU, bf16: the cost ratio c of one
shortcut call to one base step, the speed-up bound it allows, and `record` throughput.

    python benchmarks/gpu_fullsize.py --out runs/gpu-fullsize            # needs CUDA
    python benchmarks/gpu_fullsize.py --scale tiny --device cpu --out /tmp/x   # smoke test

Random weights cost the same time as trained ones, so the figures hold for the official
checkpoints (which cannot be downloaded here). Features are meaningless: no quality figures.
Prints and writes one JSON object (`gpu_fullsize.json`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from migmcut.base import dimoo, maskgit
from migmcut.benchmark import bound, measure_c
from migmcut.recipe import load_recipe
from migmcut.recording import record
from migmcut.shortcut import Shortcut, ShortcutConfig

WORDS = ["a", "large", "red", "circle", "fox", "in", "snow"]  # measure_c's prompt, among others
# the official architectures (tests/base/test_maskgit.py and tests/base/test_dimoo.py check the key layouts)
FULL = {
    "maskgit": dict(hidden_size=768, depth=24, heads=16, mlp_dim=3072, grid=32, codebook_size=1024, num_classes=1000),
    "dimoo": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=134548,
                  embedding_size=134548, rope_theta=500000.0, rms_norm_eps=1e-5, weight_tying=False),
}
TINY = {
    "maskgit": dict(hidden_size=64, depth=2, heads=4, mlp_dim=128, grid=8, codebook_size=1024, num_classes=1000),
    "dimoo": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=134548,
                  embedding_size=134548, rope_theta=500000.0, rms_norm_eps=1e-5, weight_tying=False),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_maskgit(arch: dict, device, dtype):
    recipe = load_recipe("maskgit-imagenet512", [f"base.{k}={v}" for k, v in arch.items()])
    cfg = recipe.base
    with torch.device(device):
        net = maskgit.MaskGITBase.build_transformer(cfg).to(dtype)
    # the decoder is not timed: a small random one stands in for the 42.8M VQGAN decoder
    params = {"embed_dim": 8, "n_embed": cfg.codebook_size,
              "ddconfig": {"z_channels": 8, "resolution": 2 * cfg.grid, "out_ch": 3, "ch": 32, "ch_mult": [1, 1],
                           "num_res_blocks": 1, "attn_resolutions": []}}
    vq = maskgit.TamingVQDecoder(params).to(device, dtype)
    base = maskgit.MaskGITBase(net, vq, cfg.grid, {"kind": "maskgit", "random": True, **arch})
    return recipe, base.to(device)


def build_dimoo(arch: dict, device, dtype, scratch: Path):
    from diffusers import VQModel
    from transformers import AutoTokenizer

    # a word-level tokenizer and a small VQ from the tiny twin; the 8B network is built on the GPU
    dimoo.write_random_checkpoint(scratch, words=WORDS)
    recipe = load_recipe("dimoo-t2i", [f"base.model={scratch}", "generate.prompts=[a red fox in snow, a large red circle]"])
    config = dimoo.llama_config(arch)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            net = dimoo.BidirectionalLlama(config)
    finally:
        torch.set_default_dtype(default)
    with torch.device(device):
        net.rotary_emb = type(net.rotary_emb)(config)  # fp32 inverse frequencies, as when loaded
    fingerprint = dimoo.fingerprint_of
    dimoo.fingerprint_of = lambda meta, module: "random-" + json.dumps(arch, sort_keys=True)  # no 16 GB hash
    try:
        base = dimoo.DiMOOBase(net, VQModel.from_pretrained(str(scratch), subfolder="vqvae").to(device),
                               AutoTokenizer.from_pretrained(str(scratch)), recipe.base, {"kind": "dimoo"})
    finally:
        dimoo.fingerprint_of = fingerprint
    return recipe, base.to(device)


def measure(name: str, recipe, base, device, dtype, batch: int, rec_num: int, rec_steps: int, out: Path) -> dict:
    params = sum(p.numel() for p in base.net.parameters())
    shortcut = Shortcut(ShortcutConfig.from_recipe(recipe.shortcut, base.feature_dim, base.condition_dim)).to(device, dtype)
    _sync(device)
    c = measure_c(base, shortcut, recipe.sampler, batch, repeats=5)
    row = {"model": name, "params": params, "shortcut_params": sum(p.numel() for p in shortcut.parameters()),
           "batch": batch, "tokens": base.num_tokens, **{k: round(v, 5) for k, v in c.items()}}
    N, B = recipe.sampler.steps, recipe.shortcut.budget
    row["bound"] = {f"N={N},B={B}": round(bound(N, B, c["c"]), 2)}
    if name == "maskgit":
        row["bound"]["N=32,B=8"] = round(bound(32, 8, c["c"]), 2)
    for budget in (11, 9) if name == "dimoo" else ():
        row["bound"][f"N={N},B={budget}"] = round(bound(N, budget, c["c"]), 2)
    if device.type == "cuda":
        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    store = out / f"{name}.zarr"
    _sync(device)
    t0 = time.perf_counter()
    res = record(recipe, str(store), num=rec_num, batch_size=min(batch, rec_num), steps=rec_steps, codec="bf16",
                 device=device, dtype=dtype, base=base)
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    row["record"] = {"trajectories": rec_num, "steps": rec_steps, "batch": min(batch, rec_num),
                     "seconds": round(seconds, 2), "trajectories_per_s": round(rec_num / seconds, 3),
                     "store_bytes_per_trajectory": size // rec_num, "result_seconds": round(res.seconds, 2)}
    shutil.rmtree(store, ignore_errors=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="maskgit,dimoo")
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--dimoo-record-steps", type=int, default=16, help="steps per recorded DiMOO trajectory")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-fullsize"))
    args = p.parse_args()
    torch.set_grad_enabled(False)
    device, dtype = torch.device(args.device), {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    args.out.mkdir(parents=True, exist_ok=True)
    archs = FULL if args.scale == "full" else TINY
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": args.dtype,
              "torch": torch.__version__, "rows": []}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        if name == "maskgit":
            recipe, base = build_maskgit(archs[name], device, dtype)
            row = measure(name, recipe, base, device, dtype, recipe.generate.batch_size, 32, recipe.sampler.steps,
                          args.out)
        else:
            with tempfile.TemporaryDirectory() as scratch:
                recipe, base = build_dimoo(archs[name], device, dtype, Path(scratch))
                row = measure(name, recipe, base, device, dtype, 1, 2, args.dimoo_record_steps, args.out)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        del base
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    (args.out / "gpu_fullsize.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
