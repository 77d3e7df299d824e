"""MMaDA (Gen-Verse/MMaDA): a LLaDA-8B masked diffusion LM over text + 8192 MAGVIT-v2 image codes.

Reference: Gen-Verse/MMaDA 3cdb8709635beb29f66e4e23cd66060872ac3996, `models/modeling_mmada.py`
(`MMadaModelLM.t2i_generate`), `models/modeling_llada.py`, `training/prompting_utils.py`
(`UniversalPrompting`, task `t2i_gen`), `models/modeling_magvitv2.py` (`MAGVITv2.decode_code`) and
`inference_t2i.py`. Two local directories in their published layout:

    base.model      the MMaDA checkpoint (Gen-Verse/MMaDA-8B-Base, -MixCoT): config.json with the
                    LLaDA keys (`d_model`, `n_layers`, ...), safetensors shards with names
                    `model.transformer.blocks.N.q_proj.weight` ..., the tokenizer files
    base.vq_model   the MAGVIT-v2 tokenizer (showlab/magvitv2): config.json, pytorch_model.bin (or
                    a safetensors file) with `encoder.*`, `decoder.*` and `quantize.*`

The LLM is Lumina-DiMOO's network (the same LLaDA blocks): `migmcut.base.dimoo` rebuilds it from
transformers' Llama layers and maps the official key names; this module reuses that network, its
head and its partial-evaluation hooks, and differs in what the reference feeds it:

    [iPAD] x n  <|t2i|> <bos> PROMPT <eos>   <|soi|> image tokens <|eoi|>
    `--------- max_text_len + 1 ----------'

The prompt part is left-padded with [iPAD] to `max_text_len + 1` (truncated to it with a final
<eos> when longer, as `t2i_gen_prompt` does); padded positions are masked out as keys, and the
rotary positions count every position, padding included (LLaDA's rotary embedding indexes the
whole row). The unconditional branch is the empty prompt. Image code c is vocabulary id
`len(tokenizer) + c`, the mask id 126336 (`t2i_generate`'s default, which `inference_t2i.py` uses);
features are the final norm's output at the image positions, the head the image rows of the output
projection (as the reference slices its logits). `decode` is `MAGVITv2.decode_code`: each code's
bits (most significant first) as +-1, then the VQGAN decoder, mapped to [0, 255] as
`inference_t2i.py` does (clamp((x + 1) / 2, 0, 1) * 255, truncated to uint8).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from migmcut.base.conditions import Conditions
from migmcut.base.dimoo import (KEYMAP, write_shards, LLADA_DEFAULTS, BidirectionalLlama, DiMOOBase, llama_config, read_llada_config,
                                read_shards)
from migmcut.base.interface import BaseModel, fingerprint_of
from migmcut.base.maskgit import AttnBlock, group_norm, ResBlock, Upsample, decode_stages
from migmcut.base.partial import Sequence
from migmcut.base.statedict import load_into, read_tensors, require_path
from migmcut.errors import CheckpointError, UserError

# LLaDA settings MMaDA's modeling_llada.py reads beyond those `dimoo.SUPPORTED` checks, and their
# defaults when config.json leaves them out (MMaDA 3cdb870 models/configuration_llada.py ModelConfig)
MMADA_SUPPORTED = {"include_qkv_bias": (False, None), "layer_norm_with_affine": (True,),
                   "bias_for_layer_norm": (None, False), "block_group_size": (1,), "multi_query_attention": (None, False)}
MMADA_DEFAULTS = {"include_qkv_bias": False, "layer_norm_with_affine": True, "bias_for_layer_norm": None,
                  "block_group_size": 1, "multi_query_attention": None}
HEADER_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
VQ_FILES = ("pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors",
            "pytorch_model.bin", "diffusion_pytorch_model.bin")


@dataclass(kw_only=True)
class MMaDAConfig:
    """Recipe section `base` for `kind: mmada`.

    `model`: the local MMaDA directory; `vq_model`: the local MAGVIT-v2 directory. Both required;
    `null` means "not set yet". The other numbers are `configs/mmada_demo.yaml`'s (`num_vq_tokens`,
    `codebook_size`, `dataset.preprocessing.max_seq_length`) and the reserved token ids of
    `training/prompting_utils.py`.
    """

    kind: str = "mmada"
    model: str | None
    vq_model: str | None
    num_vq_tokens: int = 1024  # a square grid: 32 x 32 at 512 px
    codebook_size: int = 8192
    max_text_len: int = 512
    mask_token_id: int = 126336
    t2i_token_id: int = 126088
    soi_token_id: int = 126084
    eoi_token_id: int = 126085
    pad_token_id: int = 126093  # [iPAD]


def read_mmada_config(folder: Path) -> dict:
    """config.json, checked: LLaDA's supported settings (`dimoo.SUPPORTED`) and MMaDA's own."""
    if not (folder / "config.json").is_file():
        raise UserError(f"base.model: {folder} has no config.json (set base.model to the MMaDA directory)")
    raw = read_llada_config(folder)
    read = {**MMADA_DEFAULTS, **raw}
    bad = [f"{k}={read[k]!r}{'' if k in raw else ' (default: not in config.json)'} (supported: "
           f"{' or '.join(repr(v) for v in ok)})" for k, ok in MMADA_SUPPORTED.items() if read[k] not in ok]
    if bad:
        raise CheckpointError(f"{folder / 'config.json'}: unsupported LLaDA settings: {', '.join(bad)}")
    return raw


def text_vocabulary(tokenizer) -> int:
    """`len(tokenizer)` as `UniversalPrompting(use_reserved_token=True)` leaves it: it adds the chat
    header tokens when the tokenizer lacks them, which moves the image codes up by as many."""
    found = tokenizer.convert_tokens_to_ids(HEADER_TOKENS[1:2])
    if not (found and found[0]):
        tokenizer.add_special_tokens({"additional_special_tokens": HEADER_TOKENS})
    return len(tokenizer)


# -- MAGVIT-v2's decoder (key names follow models/modeling_magvitv2.py) ----------------------------
class MagvitDecoder(nn.Module):
    """codes -> images in [-1, 1]: the lookup-free quantizer's code bits, then the VQGAN decoder.

    The layout is read from the tensors (`layout_of`): per level the number of residual blocks,
    their width and whether each is followed by attention, which `MAGVITv2` fixes in code."""

    def __init__(self, z_channels: int, block_in: int, levels: list[tuple[int, int, int]], out_channels: int = 3):
        super().__init__()
        self.levels = levels
        self.quantize = nn.Module()
        K = 2 ** z_channels
        bits = (torch.arange(K)[:, None] >> torch.arange(z_channels - 1, -1, -1)) & 1
        self.quantize.register_buffer("embedding", bits.float() * 2 - 1)
        self.quantize.register_buffer("power_vals", 2 ** torch.arange(z_channels - 1, -1, -1))
        d = self.decoder = nn.Module()
        d.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        d.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        d.mid = nn.Module()
        d.mid.block_1, d.mid.attn_1, d.mid.block_2 = ResBlock(block_in, block_in), AttnBlock(block_in), ResBlock(block_in, block_in)
        ups, c = [None] * len(levels), block_in
        for i in reversed(range(len(levels))):
            blocks, width, attn = levels[i]
            up = nn.Module()
            up.block = nn.ModuleList()
            for _ in range(blocks):
                up.block.append(ResBlock(c, width))
                c = width
            up.attn = nn.ModuleList(AttnBlock(width) for _ in range(attn))
            if i != 0:
                up.upsample = Upsample(c)
            ups[i] = up
        d.up = nn.ModuleList(ups)
        d.norm_out = group_norm(c)
        d.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.levels) - 1)

    @property
    def codebook_size(self) -> int:
        return self.quantize.embedding.shape[0]

    @staticmethod
    def layout_of(tensors: dict, source: str) -> dict:
        try:
            levels = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"decoder\.up\.(\d+)\.", k)))
            spec = []
            for i in range(levels):
                blocks = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(rf"decoder\.up\.{i}\.block\.(\d+)\.", k)))
                width = tensors[f"decoder.up.{i}.block.0.conv1.weight"].shape[0]
                attn = len({m.group(1) for k in tensors if (m := re.match(rf"decoder\.up\.{i}\.attn\.(\d+)\.", k))})
                spec.append((blocks, int(width), attn))
            return {"z_channels": int(tensors["decoder.post_quant_conv.weight"].shape[0]),
                    "block_in": int(tensors["decoder.conv_in.weight"].shape[0]), "levels": spec,
                    "out_channels": int(tensors["decoder.conv_out.weight"].shape[0])}
        except (ValueError, KeyError) as err:  # max() of nothing, a missing key
            raise CheckpointError(f"{source} is not a MAGVIT-v2 tokenizer (decoder.* / quantize.* tensors): "
                                  f"{type(err).__name__} {err}") from None

    def forward(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        z = self.quantize.embedding[codes.reshape(-1)].view(codes.shape[0], *grid, -1).permute(0, 3, 1, 2)
        return decode_stages(self.decoder, self.decoder.post_quant_conv(z))


def load_vq(folder: Path, codebook_size: int) -> tuple[MagvitDecoder, dict]:
    if not (folder / "config.json").is_file():
        raise UserError(f"base.vq_model: {folder} has no config.json (set base.vq_model to the MAGVIT-v2 directory, "
                        f"showlab/magvitv2)")
    path = next((folder / f for f in VQ_FILES if (folder / f).is_file()), None)
    if path is None:
        raise UserError(f"base.vq_model: {folder} has no weights ({', '.join(VQ_FILES)})")
    tensors = read_tensors(path, key="base.vq_model")
    tensors = {k: v for k, v in tensors.items() if k.startswith(("decoder.", "quantize."))}  # the encoder is not used
    layout = MagvitDecoder.layout_of(tensors, str(path))
    vq = MagvitDecoder(**layout)
    if vq.codebook_size != codebook_size:
        raise CheckpointError(f"{path}: the quantizer has {vq.codebook_size} codes (2^{layout['z_channels']}) but "
                              f"base.codebook_size is {codebook_size}")
    load_into(vq, tensors, str(path))
    return vq, layout


class MMaDABase(DiMOOBase):
    """MMaDA text-to-image: the LLaDA network of `dimoo`, MMaDA's sequence, head offset and VQ."""

    config_class = MMaDAConfig

    def __init__(self, net: BidirectionalLlama, vq: MagvitDecoder, tokenizer, cfg: MMaDAConfig, meta: dict):
        BaseModel.__init__(self)
        self.net = net.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        side = math.isqrt(cfg.num_vq_tokens)
        self.codebook_size = cfg.codebook_size
        self.mask_id = self.codebook_size
        self.grid = (side, side)
        self.feature_dim = net.config.hidden_size
        self.image_offset = text_vocabulary(tokenizer)
        self.prompt_length = cfg.max_text_len + 1  # [iPAD]... <|t2i|> <bos> PROMPT <eos>
        self._null = None
        self.fingerprint = fingerprint_of({**meta, "image_offset": self.image_offset}, self)

    @classmethod
    def from_config(cls, cfg: MMaDAConfig, dtype: torch.dtype = torch.float32) -> "MMaDABase":
        from transformers import AutoTokenizer

        folder = require_path(cfg.model, "base.model", "the local MMaDA directory (Gen-Verse/MMaDA-8B-Base)", expect="dir")
        vq_folder = require_path(cfg.vq_model, "base.vq_model", "the local MAGVIT-v2 directory (showlab/magvitv2)",
                                 expect="dir")
        side = math.isqrt(cfg.num_vq_tokens)
        if cfg.num_vq_tokens < 1 or side * side != cfg.num_vq_tokens:
            raise UserError(f"base.num_vq_tokens must be a square number of image tokens, got {cfg.num_vq_tokens}")
        if cfg.max_text_len < 3:
            raise UserError(f"base.max_text_len must hold <|t2i|> <bos> <eos> at least, got {cfg.max_text_len}")
        raw = read_mmada_config(folder)
        if not sorted(folder.glob("*.safetensors")):
            raise UserError(f"base.model: {folder} has no *.safetensors files (the MMaDA weights)")
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise UserError(f"base.model: {folder} has no tokenizer (tokenizer.json / tokenizer_config.json)")
        config = llama_config(raw)
        if config.hidden_size % config.num_attention_heads:
            raise CheckpointError(f"{folder}/config.json: d_model is not divisible by n_heads")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        except Exception as err:  # noqa: BLE001
            raise UserError(f"base.model: cannot load the tokenizer from {folder}: {err}") from None
        offset = text_vocabulary(tokenizer)
        if config.vocab_size < offset + cfg.codebook_size:
            raise CheckpointError(f"{folder}/config.json: a vocabulary of {config.vocab_size} has no room for "
                                  f"{cfg.codebook_size} image codes after the {offset} text tokens")
        vq, layout = load_vq(vq_folder, cfg.codebook_size)
        with torch.device("meta"):
            net = BidirectionalLlama(config)
        load_into(net, KEYMAP.rename_to_ours(read_shards(folder), str(folder)), str(folder), dtype=dtype)
        net.rotary_emb = type(net.rotary_emb)(config)  # its inv_freq buffer is computed, not loaded
        meta = {"kind": "mmada", "llada": {**LLADA_DEFAULTS, **MMADA_DEFAULTS, **raw}, "vq": layout,
                "config": {k: v for k, v in cfg.__dict__.items() if k not in ("model", "vq_model")}}
        return cls(net, vq, tokenizer, cfg, meta)

    # -- conditions -------------------------------------------------------------------------
    def _prompt(self, text: str) -> tuple[list[int], list[bool]]:
        """`UniversalPrompting.t2i_gen_prompt`'s text part of one prompt: ids and attention mask."""
        tok, c, P = self.tokenizer, self.cfg, self.prompt_length
        ids = list(tok(text)["input_ids"])
        if not ids:
            ids = [tok.bos_token_id]
        elif ids[0] != tok.bos_token_id:
            ids = [tok.bos_token_id] + ids
        ids = [c.t2i_token_id] + ids + [tok.eos_token_id]
        if len(ids) <= P:
            return [c.pad_token_id] * (P - len(ids)) + ids, [False] * (P - len(ids)) + [True] * len(ids)
        return ids[: P - 1] + [tok.eos_token_id], [True] * P  # the reference truncates, keeping a final <eos>

    def _encode(self, texts: list[str]) -> Conditions:
        rows = [self._prompt(t) for t in texts]
        return Conditions(ids=torch.tensor([r[0] for r in rows], device=self.device),
                          keep=torch.tensor([r[1] for r in rows], device=self.device))

    def encode_conditions(self, conditions: list) -> Conditions:
        """Conditions(ids=(B, max_text_len + 1), keep=(B, max_text_len + 1) bool): each prompt as
        `t2i_gen_prompt` builds it, left-padded with [iPAD], and its attention mask."""
        if not all(isinstance(c, str) for c in conditions):
            raise UserError("mmada is text-conditioned: give --prompt TEXT, not --class")
        if any(not c.strip() for c in conditions):
            raise UserError("empty prompt: give a description of the image")
        return self._encode(list(conditions))

    def null_conditions(self, n: int) -> Conditions:
        if self._null is None or self._null["ids"].device != self.device:
            self._null = self._encode([""])  # inference_t2i.py's unconditional prompt
        return Conditions(**{k: v.expand(n, -1).clone() for k, v in self._null.tensors.items()})

    # -- the model --------------------------------------------------------------------------
    def sequence(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, c = tokens.shape[0], self.cfg
        image = torch.where(tokens == self.mask_id, c.mask_token_id, tokens + self.image_offset)
        soi = torch.full((B, 1), c.soi_token_id, dtype=torch.long, device=tokens.device)
        eoi = torch.full((B, 1), c.eoi_token_id, dtype=torch.long, device=tokens.device)
        ids = torch.cat([cond["ids"], soi, image, eoi], 1)
        keep = cond["keep"]
        if bool(keep.all()):
            return ids, None
        return ids, torch.cat([keep, torch.ones(B, ids.shape[1] - keep.shape[1], dtype=torch.bool, device=keep.device)], 1)

    @staticmethod
    def positions_and_mask(ids: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every position counts (LLaDA's rotary table is indexed by the row); padding is masked as keys."""
        pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        return pos, None if keep is None else keep[:, None, None, :]

    def hidden(self, tokens: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """The final norm's output at every position of the sequence (B, T, D)."""
        ids, keep = self.sequence(tokens, cond)
        pos, mask = self.positions_and_mask(ids, keep)
        net = self.net
        x = net.embed_tokens(ids)
        rope = net.rotary_emb(x, pos)
        for layer in net.layers:
            x = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            if isinstance(x, tuple):
                x = x[0]
        return net.norm(x)

    def forward(self, tokens: torch.Tensor, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.prompt_length + 1
        features = self.hidden(tokens, cond)[:, start : start + self.num_tokens]
        return self.head(features), features

    def embed_conditions(self, cond: Conditions) -> torch.Tensor:
        emb = self.net.embed_tokens(cond["ids"])
        return emb * cond["keep"][..., None].to(emb.dtype)  # padding -> zero vectors

    def condition_mask(self, cond: Conditions) -> torch.Tensor:
        return cond["keep"]  # the shortcut does not attend to the [iPAD] padding

    # -- partial evaluation: DiMOO's LLaDA hooks, MMaDA's sequence --------------------------------
    def partial_sequence(self, tokens: torch.Tensor, cond: Conditions) -> Sequence:
        ids, keep = self.sequence(tokens, cond)
        return Sequence(ids, *self.positions_and_mask(ids, keep))

    def image_rows(self, positions: torch.Tensor) -> torch.Tensor:
        return self.prompt_length + 1 + positions

    def kv_layout(self) -> tuple[int, int, int]:
        c = self.net.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return c.num_hidden_layers, self.prompt_length + self.num_tokens + 2, c.num_key_value_heads * head_dim

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        codes = tokens.to(self.device).clamp(0, self.codebook_size - 1)
        x = self.vq(codes, self.grid).float()
        x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0) * 255.0
        return x.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)


# -- random-weight twins in the published layout (tests, GPU timing) -------------------------------
TEXT_VOCAB = 126464  # LLaDA's tokenizer size in MMaDA's configs (`llm_vocab_size`)
SPECIAL = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|soi|>": 126084, "<|eoi|>": 126085,
           "<|sov|>": 126086, "<|eov|>": 126087, "<|t2i|>": 126088, "<|mmu|>": 126089, "<|t2v|>": 126090,
           "<|v2v|>": 126091, "<|lvg|>": 126092, "[iPAD]": 126093, "<|r2i|>": 126094, "<|mdm_mask|>": 126336,
           "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348}


def write_tokenizer(folder: Path, words: list[str]) -> None:
    """A WordLevel tokenizer of LLaDA's size with the reserved ids where MMaDA's prompting puts them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = {i: name for name, i in SPECIAL.items()}
    names[0] = "[UNK]"
    for i, w in enumerate(sorted(set(words)), start=10):
        names[i] = w
    vocab = {names.get(i, f"<|reserved_{i}|>"): i for i in range(TEXT_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", additional_special_tokens=list(SPECIAL)[2:])
    fast.save_pretrained(str(folder))


def write_random_checkpoint(folder: Path, *, d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                            n_kv_heads: int | None = None, mlp_hidden: int = 64, codebook: int = 16, grid: int = 4,
                            max_text_len: int = 16, words: list[str] = (), seed: int = 0, std: float = 0.5,
                            vq_width: int = 32, vq_levels: int = 2, shards: int = 2) -> dict:
    """A tiny MMaDA directory (LLaDA config.json with every key LLaDA writes, sharded bf16 safetensors
    with the official names, a tokenizer of LLaDA's size) and a MAGVIT-v2 directory beside it
    (`FOLDER/magvitv2`: config.json + pytorch_model.bin). -> the `--set` overrides for the recipe."""
    folder = Path(folder)
    model_dir, vq_dir = folder / "mmada", folder / "magvitv2"
    model_dir.mkdir(parents=True, exist_ok=True)
    vq_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(model_dir, list(words) + ["a", "photo", "of"])
    vocab = TEXT_VOCAB + codebook
    config = {**LLADA_DEFAULTS, **MMADA_DEFAULTS, "architectures": ["MMadaModelLM"], "model_type": "mmada",
              "d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads or n_heads, "n_layers": n_layers,
              "mlp_hidden_size": mlp_hidden, "mlp_ratio": 4, "vocab_size": vocab, "embedding_size": vocab,
              "max_sequence_length": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False,
              "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True,
              "rope_full_precision": True, "alibi_bias_max": 8.0, "flash_attention": False, "attention_dropout": 0.0,
              "residual_dropout": 0.0, "embedding_dropout": 0.0, "attention_layer_norm_with_affine": True,
              "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "init_cutoff_factor": None,
              "precision": "amp_bf16", "eos_token_id": SPECIAL["<|endoftext|>"], "pad_token_id": SPECIAL["<|endoftext|>"],
              "mask_token_id": SPECIAL["<|mdm_mask|>"], "use_cache": False, "torch_dtype": "bfloat16",
              "llm_vocab_size": TEXT_VOCAB, "codebook_size": codebook, "num_vq_tokens": grid * grid,
              "num_new_special_tokens": 0, "new_vocab_size": vocab, "w_clip_vit": False}
    (model_dir / "config.json").write_text(json.dumps(config, indent=1))
    net = BidirectionalLlama(llama_config(config))
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():  # every tensor moved off its initial value, norms included
        w = torch.randn(v.shape, generator=g) * std if v.dim() > 1 else v + 0.1 * torch.randn(v.shape, generator=g)
        sd[KEYMAP.to_official(k)] = w.to(torch.bfloat16)
    write_shards(model_dir, sd, shards)
    z = int(math.log2(codebook))
    if 2 ** z != codebook:
        raise ValueError("a MAGVIT-v2 codebook is a power of two")
    vq = MagvitDecoder(z, vq_width, [(1, vq_width, 1 if level == vq_levels - 1 else 0) for level in range(vq_levels)])
    vsd = {}
    for k, v in vq.state_dict().items():  # from `g` alone (not the modules' initial values): the same twin every time
        if k.startswith("quantize."):
            vsd[k] = v.clone()
        elif v.dim() > 1:
            vsd[k] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
        else:
            vsd[k] = (1.0 if ".norm" in k and k.endswith(".weight") else 0.0) + 0.1 * torch.randn(v.shape, generator=g)
    vsd |= {f"encoder.conv_in.{n}": torch.randn(s, generator=g) for n, s in (("weight", (vq_width, 3, 3, 3)), ("bias", (vq_width,)))}
    torch.save(vsd, vq_dir / "pytorch_model.bin")
    (vq_dir / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}))
    return {"base.model": str(model_dir), "base.vq_model": str(vq_dir), "base.num_vq_tokens": grid * grid,
            "base.codebook_size": codebook, "base.max_text_len": max_text_len}
