"""Lumina-DiMOO (Alpha-VLLM): a LLaDA-8B masked diffusion LM over text + 8192 VQ image codes.

The official checkpoint directory (config.json with LLaDA keys `d_model`, `n_layers`, ...,
safetensors shards with names `model.transformer.blocks.N.q_proj.weight` ..., the tokenizer files,
and `vqvae/` for diffusers' `VQModel`) loads unchanged. The network is built from transformers'
Llama modules (`LlamaDecoderLayer`, `LlamaRMSNorm`, `LlamaRotaryEmbedding`) run bidirectionally,
and `KEYMAP` renames the official keys to ours: a LLaDA "llama" block is a Llama decoder layer
(attn_norm/ff_norm = RMSNorm, q/k/v/attn_out, SwiGLU with ff_proj = gate, up_proj = up,
ff_out = down), ln_f the final norm and transformer.ff_out the output projection.

Sequence of one branch (as the reference text-to-image inference builds it):

    tokenizer("<system>SYS</system><user>PROMPT</user>")  [BOA] [BOI]
    (grid_w image tokens [NEWLINE]) x grid_h  [EOI] [EOA]

The unconditional branch replaces PROMPT by "<uncondition>". Prompts of a batch are left-padded
to `max_prompt_tokens` with key padding masked out of attention and positions counted from the
first real token, so a padded row computes what the unpadded sequence would. Image code c is
vocabulary id `image_offset + c` with image_offset = vocabulary size - codebook size (as the
reference computes it); features are the final-norm output at the image positions (newlines
excluded); the head is the image rows of the output projection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from migmcut.base.condition_sources import ConditionSource, recipe_prompts
from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel, call_arguments, decode_codes, fingerprint_of
from migmcut.base.partial import Sequence, split_heads
from migmcut.base.statedict import KeyMap, load_into, require_path
from migmcut.errors import CheckpointError, UserError, quote

PAD = -1  # prompt padding inside condition tensors (never a vocabulary id)

KEYMAP = KeyMap((
    ("model.transformer.wte.weight", "embed_tokens.weight"),
    ("model.transformer.ln_f.weight", "norm.weight"),
    ("model.transformer.ff_out.weight", "lm_head.weight"),
    ("model.transformer.blocks.{i}.attn_norm.weight", "layers.{i}.input_layernorm.weight"),
    ("model.transformer.blocks.{i}.ff_norm.weight", "layers.{i}.post_attention_layernorm.weight"),
    ("model.transformer.blocks.{i}.q_proj.weight", "layers.{i}.self_attn.q_proj.weight"),
    ("model.transformer.blocks.{i}.k_proj.weight", "layers.{i}.self_attn.k_proj.weight"),
    ("model.transformer.blocks.{i}.v_proj.weight", "layers.{i}.self_attn.v_proj.weight"),
    ("model.transformer.blocks.{i}.attn_out.weight", "layers.{i}.self_attn.o_proj.weight"),
    ("model.transformer.blocks.{i}.ff_proj.weight", "layers.{i}.mlp.gate_proj.weight"),
    ("model.transformer.blocks.{i}.up_proj.weight", "layers.{i}.mlp.up_proj.weight"),
    ("model.transformer.blocks.{i}.ff_out.weight", "layers.{i}.mlp.down_proj.weight"),
))

# the LLaDA config.json values this adapter implements (anything else is refused by name)
SUPPORTED = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
             "alibi": False, "include_bias": False, "scale_logits": False, "input_emb_norm": False,
             "attention_layer_norm": False}
# LLaDA's own defaults for a key config.json leaves out (Lumina-DiMOO 81344e6 model/configuration_llada.py
# `ModelConfig`, which `LLaDAConfig` starts from): a missing key means these, never what we support
LLADA_DEFAULTS = {"block_type": "sequential", "activation_type": "swiglu", "layer_norm_type": "default", "rope": False,
                  "alibi": False, "include_bias": False, "scale_logits": False, "input_emb_norm": False,
                  "attention_layer_norm": False, "weight_tying": True, "embedding_size": 50304, "mlp_ratio": 4,
                  "mlp_hidden_size": None, "n_kv_heads": None, "max_sequence_length": 1024, "rms_norm_eps": 1e-05,
                  "rope_theta": 10000.0}


@dataclass(kw_only=True)
class DiMOOConfig:
    """Recipe section `base` for `kind: dimoo`.

    `model`: the local Lumina-DiMOO directory (config.json, *.safetensors, tokenizer files and
    `vqvae/`). Required in every recipe; `null` means "not set yet". `vqvae`: another directory
    holding `vqvae/` (default: `model`). The special token ids default to Lumina-DiMOO's.
    """

    kind: str = "dimoo"
    model: str | None
    vqvae: str | None = None
    height: int = 1024
    width: int = 1024
    vae_scale: int = 16  # pixels per token side
    codebook_size: int = 8192
    max_prompt_tokens: int = 256
    system_prompt: str = "Generate an image according to the text prompt."
    mask_token_id: int = 126336
    newline_token_id: int = 126084
    boa_token_id: int = 126354
    eoa_token_id: int = 126355
    boi_token_id: int = 126349
    eoi_token_id: int = 126350


def llama_config(c: dict):
    """A transformers LlamaConfig equivalent to a LLaDA config.json."""
    from transformers import LlamaConfig

    c = {**LLADA_DEFAULTS, **c}
    d, heads = int(c["d_model"]), int(c["n_heads"])
    return LlamaConfig(
        vocab_size=int(c["embedding_size"] or c["vocab_size"]),
        hidden_size=d,
        intermediate_size=int(c["mlp_hidden_size"] or c["mlp_ratio"] * d),
        num_hidden_layers=int(c["n_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(c["n_kv_heads"] or heads),
        hidden_act="silu",
        max_position_embeddings=int(c["max_sequence_length"]),
        rms_norm_eps=float(c["rms_norm_eps"]),
        rope_theta=float(c["rope_theta"]),
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(c["weight_tying"]),
        attn_implementation="sdpa",
    )


class BidirectionalLlama(nn.Module):
    """Llama decoder layers without the causal mask; names as in transformers' LlamaForCausalLM minus `model.`."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.llama.modeling_llama import (
            LlamaDecoderLayer,
            LlamaRMSNorm,
            LlamaRotaryEmbedding,
        )

        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.tied = bool(config.tie_word_embeddings)
        if not self.tied:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.tied else self.lm_head.weight

    def forward(self, ids: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """ids (B, T) -> final-norm hidden states (B, T, D); `keep` (B, T) bool marks real tokens."""
        x = self.embed_tokens(ids)
        pos, mask = positions_and_mask(ids, keep)
        rope = self.rotary_emb(x, pos)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            if isinstance(x, tuple):
                x = x[0]
        return self.norm(x)


def positions_and_mask(ids: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids counted from each row's first real token, and the (B, 1, 1, T) key mask (None: all keys)."""
    if keep is None:
        return torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1), None
    return (keep.long().cumsum(1) - 1).clamp_min(0), keep[:, None, None, :]


def read_llada_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"base.model: {folder} has no config.json (set base.model to the Lumina-DiMOO directory)")
    c = json.loads(path.read_text())
    missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if k not in c]
    if missing:
        raise CheckpointError(f"{path} is not a LLaDA config: no {', '.join(missing)}")
    read = {**LLADA_DEFAULTS, **c}
    bad = [f"{k}={read[k]!r}{'' if k in c else ' (LLaDA default: not in config.json)'} (supported: {v!r})"
           for k, v in SUPPORTED.items() if read[k] != v]
    if bad:
        raise CheckpointError(f"{path}: unsupported LLaDA settings: {', '.join(bad)}")
    return c


def read_shards(folder: Path, dtype: torch.dtype | None = None) -> dict:

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"base.model: {folder} has no *.safetensors files (the Lumina-DiMOO weights)")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


class DiMOOBase(BaseModel):
    config_class = DiMOOConfig
    condition_source = ConditionSource("prompts", "recipe-prompts/uniform/v1", recipe_prompts)

    def __init__(self, net: BidirectionalLlama, vq, tokenizer, cfg: DiMOOConfig, meta: dict):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.codebook_size = cfg.codebook_size
        self.mask_id = self.codebook_size
        self.grid = (cfg.height // cfg.vae_scale, cfg.width // cfg.vae_scale)
        self.feature_dim = net.config.hidden_size
        self.image_offset = net.config.vocab_size - cfg.codebook_size
        self.prompt_length = cfg.max_prompt_tokens
        h, w = self.grid
        # image token j sits at tail position 2 + (j // w) * (w + 1) + j % w
        j = torch.arange(h * w)
        self.register_buffer("image_index", 2 + (j // w) * (w + 1) + j % w, persistent=False)
        tail = torch.full((2 + h * (w + 1) + 2,), cfg.newline_token_id, dtype=torch.long)
        tail[0], tail[1], tail[-2], tail[-1] = cfg.boa_token_id, cfg.boi_token_id, cfg.eoi_token_id, cfg.eoa_token_id
        self.register_buffer("tail", tail, persistent=False)
        self._null = self._tokenize(["<uncondition>"], check=False)[0] if tokenizer is not None else None
        self.fingerprint = fingerprint_of(meta, self) if net.embed_tokens.weight.device.type != "meta" else "meta"

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: DiMOOConfig, dtype: torch.dtype = torch.float32) -> "DiMOOBase":
        from diffusers import VQModel
        from transformers import AutoTokenizer

        folder = require_path(cfg.model, "base.model", "the local Lumina-DiMOO directory", expect="dir")
        vq_root = require_path(cfg.vqvae, "base.vqvae", "a directory holding vqvae/", expect="dir") if cfg.vqvae else folder
        if not (vq_root / "vqvae" / "config.json").is_file():
            raise UserError(f"{vq_root} has no vqvae/config.json (set base.vqvae to the directory holding vqvae/)")
        if cfg.height % cfg.vae_scale or cfg.width % cfg.vae_scale:
            raise UserError(f"base.height/width must be multiples of base.vae_scale ({cfg.vae_scale})")
        raw = read_llada_config(folder)
        config = llama_config(raw)
        if config.hidden_size % config.num_attention_heads:
            raise CheckpointError(f"{folder}/config.json: d_model is not divisible by n_heads")
        if config.vocab_size <= cfg.codebook_size:
            raise CheckpointError(f"vocabulary {config.vocab_size} is not larger than base.codebook_size {cfg.codebook_size}")
        with torch.device("meta"):
            net = BidirectionalLlama(config)
        tensors = KEYMAP.rename_to_ours(read_shards(folder), str(folder))
        load_into(net, tensors, str(folder), dtype=dtype)  # straight into --dtype: no fp32 copy of 8B weights
        net.rotary_emb = type(net.rotary_emb)(config)  # its inv_freq buffer is computed, not loaded
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001
            raise UserError(f"base.model: cannot load the tokenizer from {folder}: {err}") from None
        vq = VQModel.from_pretrained(str(vq_root), subfolder="vqvae")
        meta = {"kind": "dimoo", "llada": raw, "vqvae": dict(vq.config),
                "config": {k: v for k, v in cfg.__dict__.items() if k not in ("model", "vqvae")}}
        return cls(net, vq, tokenizer, cfg, meta)

    # -- conditions -------------------------------------------------------------------------
    def _tokenize(self, texts: list[str], check: bool = True) -> torch.Tensor:
        P = self.prompt_length
        out = torch.full((len(texts), P), PAD, dtype=torch.long)
        for i, text in enumerate(texts):
            if check and not text.strip():
                raise UserError("empty prompt: give a description of the image")
            full = f"<system>{self.cfg.system_prompt}</system><user>{text}</user>"
            ids = self.tokenizer(full)["input_ids"]
            if len(ids) > P:
                raise UserError(f"prompt {quote(text)} is {len(ids)} tokens with its template; the limit is "
                                f"base.max_prompt_tokens={P}")
            out[i, P - len(ids):] = torch.tensor(ids)
        return out

    def encode_conditions(self, conditions: list) -> Conditions:
        """Conditions(ids=(B, max_prompt_tokens), null=(B,) bool): each prompt's template ids, left-padded
        with PAD; `null` marks CFG's unconditional rows (the released DiMOO-Shortcut treats the branches
        differently: `migmcut.base.dimoo_shortcut`)."""
        if not all(isinstance(c, str) for c in conditions):
            raise UserError("dimoo is text-conditioned: give --prompt TEXT, not --class")
        ids = self._tokenize(conditions).to(self.device)
        return Conditions(ids=ids, null=torch.zeros(len(conditions), dtype=torch.bool, device=self.device))

    def null_conditions(self, n: int) -> Conditions:
        return Conditions(ids=self._null.to(self.device).expand(n, -1).clone(),
                          null=torch.ones(n, dtype=torch.bool, device=self.device))

    # -- the model --------------------------------------------------------------------------
    def sequence(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, cond = tokens.shape[0], cond["ids"]
        image = torch.where(tokens == self.mask_id, self.cfg.mask_token_id, tokens + self.image_offset)
        tail = self.tail.expand(B, -1).clone()
        tail[:, self.image_index] = image
        keep = cond != PAD
        ids = torch.cat([cond.clamp_min(0), tail], 1)
        if bool(keep.all()):
            return ids, None
        return ids, torch.cat([keep, torch.ones_like(tail, dtype=torch.bool)], 1)

    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, _ = self.forward_sequence(tokens, cond)
        return logits, features

    def forward_sequence(self, tokens: torch.Tensor, cond: Conditions):
        """Logits and features of the image tokens, and the final-norm output at every row of the
        sequence (B, max_prompt_tokens + tail, D), prompt padding included (never read)."""
        ids, keep = self.sequence(tokens, cond)
        sequence = self.net(ids, keep)
        features = sequence[:, self.prompt_length + self.image_index]
        return self.head(features), features, sequence

    def head(self, features: torch.Tensor) -> torch.Tensor:
        w = self.net.output_weight[self.image_offset : self.image_offset + self.codebook_size]
        return torch.nn.functional.linear(features, w)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net.embed_tokens(tokens + self.image_offset)

    # no embed_positions: RoPE has no absolute position embedding, so the shortcut uses its own

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        ids = cond["ids"]
        emb = self.net.embed_tokens(ids.clamp_min(0))
        return emb * (ids != PAD)[..., None].to(emb.dtype)  # padding -> zero vectors

    def condition_mask(self, cond: Conditions) -> torch.Tensor:
        return cond["ids"] != PAD  # the shortcut does not attend to prompt padding

    # -- partial evaluation: LlamaDecoderLayer by hand (pre-RMSNorm, RoPE, SwiGLU) --------------------
    supports_partial = True

    def partial_sequence(self, tokens: torch.Tensor, cond: Conditions) -> Sequence:
        ids, keep = self.sequence(tokens, cond)
        return Sequence(ids, *positions_and_mask(ids, keep))

    def image_rows(self, positions: torch.Tensor) -> torch.Tensor:
        return self.prompt_length + self.image_index[positions]

    def embed_rows(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.net.embed_tokens(ids)

    def partial_blocks(self) -> list:
        return list(self.net.layers)

    def block_qkv(self, block, x, pos):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        att = block.self_attn
        h = block.input_layernorm(x)
        q, k, v = (split_heads(m(h), att.head_dim) for m in (att.q_proj, att.k_proj, att.v_proj))
        q, k = apply_rotary_pos_emb(q, k, *self.net.rotary_emb(x, pos))
        return q, k, v

    def block_out(self, block, x, attn):
        x = x + block.self_attn.o_proj(attn)
        return x + block.mlp(block.post_attention_layernorm(x))

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.norm(x)

    def kv_layout(self) -> tuple[int, int, int]:
        c = self.net.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_hidden_layers, self.prompt_length + len(self.tail), c.num_key_value_heads * head_dim

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return decode_codes(self.vq, tokens, self.grid, self.codebook_size)

    # -- attach (migmcut.attach): `generate_image` calls `model(ids, infer=True).logits`, one branch a call --
    budget_rounding = "half-even"  # the reference's refresh_steps (Python's round)

    def attach_network(self) -> "LLaDACall":
        """LLaDA's call on this base's network (`LLaDACall`), the same object every time."""
        if "_llada_call" not in self.__dict__:
            self.__dict__["_llada_call"] = LLaDACall(self.net)  # not a submodule: the base's state is unchanged
        return self.__dict__["_llada_call"]

    def attach_read(self, args, kwargs):
        """ids (R, T): any prompt, then this grid's image segment (BOA BOI, rows of codes + newline, EOI EOA)."""
        ids = call_arguments(LLaDACall.forward, args, kwargs)["input_ids"]
        n = len(self.tail)
        if not torch.is_tensor(ids) or ids.dim() != 2:
            raise UserError(f"the LLaDA call needs input_ids (rows, length), got {tuple(getattr(ids, 'shape', ()))}")
        if ids.shape[1] < n:
            return None  # shorter than an image: no sampling step (generate_image's vocabulary probe)
        tail = ids[:, -n:]
        image = tail[:, self.image_index]
        frame = tail.clone()
        frame[:, self.image_index] = self.tail[self.image_index]
        if not bool((frame == self.tail).all()):
            raise UserError(f"the last {n} input ids are not the image segment of this base's {self.grid[0]}x{self.grid[1]} "
                            f"grid (BOA BOI, rows of codes and a newline, EOI EOA): generate at base.height/width")
        tokens = torch.where(image == self.cfg.mask_token_id, self.mask_id, image - self.image_offset)
        if bool(((tokens < 0) | (tokens > self.mask_id)).any()):
            raise UserError("the image segment holds ids that are neither image codes nor the mask token")
        prompt = ids[:, :-n]
        if prompt.shape[1] > self.prompt_length:
            raise UserError(f"a prompt of {prompt.shape[1]} ids; the limit is base.max_prompt_tokens={self.prompt_length}")
        pad = prompt.new_full((prompt.shape[0], self.prompt_length - prompt.shape[1]), PAD)
        return tokens, Conditions(ids=torch.cat([pad, prompt], 1))  # left-padded, as encode_conditions

    def attach_feature_site(self):
        return self.net.norm, False  # the final norm's output: the head's input at every position

    def attach_features(self, captured, args, kwargs):
        rows = captured.shape[1] - len(self.tail) + self.image_index
        return captured[:, rows], None

    def attach_output(self, logits, args, kwargs):
        """LLaDA's output over the whole sequence and vocabulary: the head's logits at the image positions'
        code columns, NaN elsewhere (a shortcut step predicts nothing else)."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        T = call_arguments(LLaDACall.forward, args, kwargs)["input_ids"].shape[1]
        full = logits.new_full((logits.shape[0], T, self.net.config.vocab_size), float("nan"))
        full[:, T - len(self.tail) + self.image_index, self.image_offset : self.image_offset + self.codebook_size] = logits
        return CausalLMOutputWithPast(logits=full)


# -- random-weight twins in the official layout (tests, GPU timing) -----------------------------
SPECIAL_WORDS = ["<system>", "</system>", "<user>", "</user>", "<uncondition>"]


def write_shards(folder: Path, tensors: dict, shards: int) -> None:
    """`tensors` as the Hub lays out a large checkpoint: `model-0000k-of-0000n.safetensors` files and
    `model.safetensors.index.json` mapping each name to its file (twins in the published layout)."""

    names = sorted(tensors)
    per = math.ceil(len(names) / shards)
    index = {}
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(folder / fname))
        index.update({k: fname for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


def write_random_checkpoint(folder: Path, *, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                            n_kv_heads: int | None = None, mlp_hidden: int = 64, codebook: int = 16, words: list[str] = (), seed: int = 0,
                            std: float = 0.5, shards: int = 2) -> dict:
    """A tiny Lumina-DiMOO directory: LLaDA config.json, sharded safetensors with the official key
    names, a WordLevel tokenizer, and vqvae/. Returns the `--set` overrides for the dimoo recipe."""
    from diffusers import VQModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_words = ["[UNK]", "[PAD]", "<|startoftext|>"] + SPECIAL_WORDS
    text = sorted({w for w in (list(words) + "Generate an image according to the text prompt .".split())})
    vocab = {w: i for i, w in enumerate(base_words + text)}
    special = {name: len(vocab) + k for k, name in enumerate(["mask", "newline", "boa", "eoa", "boi", "eoi"])}
    text_vocab = len(vocab) + len(special)
    vocab_size = text_vocab + codebook
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<|startoftext|>", additional_special_tokens=SPECIAL_WORDS)
    fast.save_pretrained(str(folder))
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": d_model, "n_heads": n_heads,
              "n_kv_heads": n_kv_heads or n_heads, "n_layers": n_layers, "mlp_hidden_size": mlp_hidden, "mlp_ratio": 4,
              "vocab_size": vocab_size, "embedding_size": vocab_size, "max_sequence_length": 4096,
              "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False, "include_bias": False,
              "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
              "alibi": False, "mask_token_id": special["mask"], "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    net = BidirectionalLlama(llama_config(config))
    g = torch.Generator().manual_seed(seed)
    sd = {KEYMAP.to_official(k): (torch.randn(v.shape, generator=g) * std if v.dim() > 1 else v.clone()).to(torch.bfloat16)
          for k, v in net.state_dict().items()}
    write_shards(folder, sd, shards)
    torch.manual_seed(seed)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                 latent_channels=4, num_vq_embeddings=codebook, vq_embed_dim=4, norm_num_groups=4, sample_size=16,
                 mid_block_add_attention=False, lookup_from_codebook=True)
    vq.save_pretrained(str(folder / "vqvae"))
    return {"base.model": str(folder), "base.codebook_size": codebook, "base.mask_token_id": special["mask"],
            "base.newline_token_id": special["newline"], "base.boa_token_id": special["boa"],
            "base.eoa_token_id": special["eoa"], "base.boi_token_id": special["boi"], "base.eoi_token_id": special["eoi"],
            "base.vae_scale": 2}


class LLaDACall(nn.Module):
    """Lumina-DiMOO's model as its reference loop calls it, `model(input_ids, infer=True).logits` (B, T,
    vocabulary), on migmcut's rebuilt network (no trust_remote_code), so `generate_image` runs on a base
    loaded by migmcut; `DiMOOBase.attach_network()` gives the one `migmcut.attach` hooks."""

    def __init__(self, net: BidirectionalLlama):
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor, infer: bool = True):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        hidden = self.net(input_ids, None)
        return CausalLMOutputWithPast(logits=torch.nn.functional.linear(hidden, self.net.output_weight))
