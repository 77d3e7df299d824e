"""Tiny random-weight twins and reference fixtures that several test modules share (no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

from migmcut.base.amused import write_random_checkpoint as write_amused

FIXTURES = Path(__file__).parent / "fixtures"

# aMUSEd: a twin in the Hub layout with a seven-word tokenizer
AMUSED_RECIPE = "amused-256"
AMUSED_WORDS = ["a", "red", "fox", "in", "snow", "blue", "car"]

# the paper's released MaskGIT-Shortcut as the reference saves one, and the reference loop's tokens
RELEASED = FIXTURES / "released"
MASKGIT_RELEASE = RELEASED / "maskgit-shortcut.pth"
MASKGIT_SAMPLING = json.loads((RELEASED / "maskgit_sampling.json").read_text())


def amused_twin(folder, **kw) -> list[str]:
    """Write an aMUSEd twin into `folder`; -> the recipe overrides that load it."""
    sets = write_amused(folder, words=AMUSED_WORDS, **kw)
    # 4x4 tokens (diffusers' aMUSEd test size: sample_size 4; the twin's VQ downsamples 2x)
    sets |= {"base.height": 8, "base.width": 8, "sampler.steps": 6, "shortcut.heads": 2, "generate.prompts": "[a red fox, a fox in snow]"}
    return [f"{k}={v}" for k, v in sets.items()]


def amused_pipeline(base):
    """diffusers' AmusedPipeline over the twin's components."""
    from diffusers import AmusedPipeline, AmusedScheduler

    scheduler = AmusedScheduler.from_pretrained(base.cfg.model, subfolder="scheduler")
    pipe = AmusedPipeline(vqvae=base.vq, tokenizer=base.tokenizer, text_encoder=base.text_encoder,
                          transformer=base.transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
