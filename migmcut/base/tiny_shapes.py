"""The built-in tiny-shapes base: a miniature of Lumina-DiMOO that runs on a CPU.

One bidirectional transformer (transformers' `BertForMaskedLM`) reads a single sequence of
`prompt_length` prompt word tokens followed by 16x16 image tokens, over one vocabulary:

    [PAD] [MASK] [NULL] | the grammar's words | the tokenizer's codebook

The unconditional (CFG) branch replaces every prompt token by [NULL]. Features are the last
encoder layer's outputs at the image positions; the head is the MLM prediction head restricted
to the codebook rows. Images come from a small diffusers `VQModel` (see `migmcut.world.tokenizer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import VQModel
from transformers import BertConfig, BertForMaskedLM

from migmcut.base.conditions import Conditions
from migmcut.base.interface import BaseModel, call_arguments, fingerprint_of
from migmcut.base.partial import Sequence, split_heads
from migmcut.errors import UserError, quote
from migmcut.world import shapes
from migmcut.world import tokenizer as tok
from migmcut.base.condition_sources import ConditionSource, tiny_shapes_prompts

PAD, MASK, NULL = 0, 1, 2
WORDS = (
    ["a", "of", "left", "right", "above", "below"]
    + list(shapes.SIZES)
    + list(shapes.COLORS)
    + list(shapes.SHAPES)
)
WORD_IDS = {w: 3 + i for i, w in enumerate(WORDS)}
IMAGE_OFFSET = 3 + len(WORDS)
BUILTIN_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny-shapes"


@dataclass
class TinyShapesConfig:
    """Recipe section `base` for `kind: tiny-shapes`.

    `weights`: `builtin` (the shipped weights), a directory holding `tokenizer/` and `base/`, or
    `random` (fresh weights from `init_seed` with the sizes below: for tests and debugging).
    """

    kind: str = "tiny-shapes"
    weights: str = "builtin"
    hidden_size: int = 128
    num_layers: int = 8
    num_heads: int = 4
    prompt_length: int = 12
    codebook_size: int = 256
    vq_channels: tuple[int, ...] = (16, 32, 64)
    init_seed: int = 0
    init_std: float = 0.02  # random weights only: larger values give a livelier debug model


def bert_config(hidden: int, layers: int, heads: int, prompt_length: int, codebook: int, grid: int = 16):
    return BertConfig(
        vocab_size=IMAGE_OFFSET + codebook,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=prompt_length + grid * grid,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        attn_implementation="sdpa",
    )


def tokenize_prompts(prompts: list[str], length: int) -> torch.Tensor:
    """Prompts -> (B, length) word ids, padded with [PAD]. Raises UserError on foreign words."""
    out = torch.full((len(prompts), length), PAD, dtype=torch.long)
    for i, text in enumerate(prompts):
        words = text.strip().lower().split()
        if not words:
            raise UserError("empty prompt: give a caption such as 'a large red circle'")
        unknown = [w for w in words if w not in WORD_IDS]
        if unknown:
            raise UserError(
                f"prompt {quote(text)} has words the tiny-shapes model does not know: {quote(', '.join(unknown))} "
                f"(known: {' '.join(WORDS)})"
            )
        if len(words) > length:
            raise UserError(f"prompt {quote(text)} is longer than {length} words")
        out[i, : len(words)] = torch.tensor([WORD_IDS[w] for w in words])
    return out


class TinyShapesBase(BaseModel):
    config_class = TinyShapesConfig
    condition_source = ConditionSource("prompts", "tiny-shapes/train-split/half-single-half-pair/v1", tiny_shapes_prompts)
    default_metrics = ("prompt_accuracy", "fd")

    def __init__(self, mlm: BertForMaskedLM, vq: VQModel, prompt_length: int, meta: dict):
        super().__init__()
        self.mlm = mlm.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.prompt_length = prompt_length
        self.codebook_size = vq.config.num_vq_embeddings
        self.mask_id = self.codebook_size
        self.grid = (16, 16)
        self.feature_dim = mlm.config.hidden_size
        self.fingerprint = fingerprint_of(meta, self)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: TinyShapesConfig, dtype: torch.dtype = torch.float32) -> "TinyShapesBase":
        if cfg.weights == "random":
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(cfg.init_seed)
            config = bert_config(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.prompt_length, cfg.codebook_size)
            config.initializer_range = cfg.init_std
            mlm = BertForMaskedLM(config)
            vq = VQModel(
                **dict(
                    tok.VQ_CONFIG,
                    num_vq_embeddings=cfg.codebook_size,
                    block_out_channels=tuple(cfg.vq_channels),
                    norm_num_groups=min(8, *cfg.vq_channels),
                )
            )
            torch.random.set_rng_state(gen_state)
            meta = {"kind": "tiny-shapes", "weights": "random", "config": _plain(cfg)}
            return cls(mlm, vq, cfg.prompt_length, meta)
        root = BUILTIN_WEIGHTS if cfg.weights == "builtin" else Path(cfg.weights).expanduser()
        for sub in ("base", "tokenizer"):
            if not (root / sub / "config.json").is_file():
                raise UserError(
                    f"tiny-shapes weights not found: {root / sub} has no config.json "
                    f"(set base.weights to a directory holding base/ and tokenizer/, or 'random')"
                )
        mlm = BertForMaskedLM.from_pretrained(root / "base", attn_implementation="sdpa")
        vq = VQModel.from_pretrained(root / "tokenizer")
        prompt_length = mlm.config.max_position_embeddings - 256
        meta = {"kind": "tiny-shapes", "base": mlm.config.to_dict(), "tokenizer": dict(vq.config)}
        return cls(mlm, vq, prompt_length, meta)

    # -- the interface --------------------------------------------------------------------
    def encode_conditions(self, conditions: list) -> Conditions:
        if not all(isinstance(c, str) for c in conditions):
            raise UserError("tiny-shapes is text-conditioned: give --prompt, not --class")
        return Conditions(ids=tokenize_prompts(conditions, self.prompt_length).to(self.device))

    def null_conditions(self, n: int) -> Conditions:
        return Conditions(ids=torch.full((n, self.prompt_length), NULL, dtype=torch.long, device=self.device))

    def input_ids(self, tokens: torch.Tensor, cond: Conditions) -> torch.Tensor:
        image = torch.where(tokens == self.mask_id, MASK, tokens + IMAGE_OFFSET)
        return torch.cat([cond["ids"], image], dim=1)

    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.mlm.bert(input_ids=self.input_ids(tokens, cond)).last_hidden_state
        features = hidden[:, self.prompt_length :]
        return self.head(features), features

    def head(self, features: torch.Tensor) -> torch.Tensor:
        pred = self.mlm.cls.predictions
        x = pred.transform(features)
        w = pred.decoder.weight[IMAGE_OFFSET : IMAGE_OFFSET + self.codebook_size]
        b = pred.decoder.bias[IMAGE_OFFSET : IMAGE_OFFSET + self.codebook_size]
        return torch.nn.functional.linear(x, w, b)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlm.bert.embeddings.word_embeddings(tokens + IMAGE_OFFSET)

    def embed_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return self.mlm.bert.embeddings.position_embeddings(positions + self.prompt_length)

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        return self.mlm.bert.embeddings.word_embeddings(cond["ids"])

    # -- partial evaluation: BertLayer by hand (post-norm attention and MLP, as modeling_bert) ------
    supports_partial = True

    def partial_sequence(self, tokens: torch.Tensor, cond: Conditions) -> Sequence:
        ids = self.input_ids(tokens, cond)
        return Sequence(ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids), None)

    def image_rows(self, positions: torch.Tensor) -> torch.Tensor:
        return positions + self.prompt_length

    def embed_rows(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.mlm.bert.embeddings(input_ids=ids, position_ids=pos)  # word + token type + position, LayerNorm

    def partial_blocks(self) -> list:
        return list(self.mlm.bert.encoder.layer)

    def block_qkv(self, block, x, pos):
        att = block.attention.self
        return tuple(split_heads(m(x), att.attention_head_size) for m in (att.query, att.key, att.value))

    def block_out(self, block, x, attn):
        x = block.attention.output(attn, x)  # dense, LayerNorm(. + x)
        return block.output(block.intermediate(x), x)

    def kv_layout(self) -> tuple[int, int, int]:
        c = self.mlm.config
        return c.num_hidden_layers, self.prompt_length + self.num_tokens, c.hidden_size

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        images = tok.decode(self.vq, tokens.to(self.device), grid=self.grid[0])
        return tok.to_uint8(images.float()).cpu().numpy()

    # -- attach (migmcut.attach): a loop calls `mlm(input_ids=prompt + image ids)` -------------------
    def attach_network(self):
        return self.mlm

    def attach_read(self, args, kwargs):
        """`mlm(input_ids (R, prompt_length + L))`, prompt ids then image ids ([MASK] where masked)."""
        call = call_arguments(type(self.mlm).forward, args, kwargs)
        extra = {**{k: v for k, v in call.items() if k not in ("self", "input_ids", "kwargs")},
                 **{k: v for k, v in call.get("kwargs", {}).items() if k != "return_dict"}}
        extra = sorted(k for k, v in extra.items() if v is not None)
        if extra:
            raise UserError(f"attach follows the tiny-shapes network called with input_ids alone (as the base calls "
                            f"it); this call also passes {', '.join(extra)}")
        ids, P = call["input_ids"], self.prompt_length
        if not torch.is_tensor(ids) or ids.dim() != 2 or ids.shape[1] != P + self.num_tokens:
            raise UserError(f"the tiny-shapes network was called with input_ids of shape "
                            f"{tuple(getattr(ids, 'shape', ()))}, not (rows, {P} prompt + {self.num_tokens} image positions)")
        image = ids[:, P:]
        tokens = torch.where(image == MASK, self.mask_id, image - IMAGE_OFFSET)
        if bool(((tokens < 0) | (tokens > self.mask_id)).any()):
            raise UserError("the tiny-shapes network's image positions hold ids that are neither image codes nor [MASK]")
        return tokens, Conditions(ids=ids[:, :P])

    def attach_feature_site(self):
        return self.mlm.cls, True  # the MLM head's input: the last layer's hidden states

    def attach_features(self, captured, args, kwargs):
        return captured[:, self.prompt_length :], None

    def attach_output(self, logits, args, kwargs):
        """MaskedLMOutput over the whole sequence and vocabulary: the head's logits at the image positions'
        code columns, NaN elsewhere (a shortcut step predicts nothing else)."""
        from transformers.modeling_outputs import MaskedLMOutput

        R, P, K = logits.shape[0], self.prompt_length, self.codebook_size
        full = logits.new_full((R, P + self.num_tokens, self.mlm.config.vocab_size), float("nan"))
        full[:, P:, IMAGE_OFFSET : IMAGE_OFFSET + K] = logits
        ret = call_arguments(type(self.mlm).forward, args, kwargs).get("kwargs", {}).get("return_dict")
        return (full,) if ret is False else MaskedLMOutput(logits=full)


def _plain(cfg) -> dict:
    return json.loads(json.dumps(cfg.__dict__, default=list))
