"""``OFAModel``: the unified encoder-decoder, split into ``encode`` (once per image) and ``decode_step``.

Shape legend: B images, K beams, N = B*K hypotheses, P image patches, L prompt tokens,
S = P + L encoder positions, T decoder positions, H heads, D head dim, C width, V vocabulary.

Positions never enter the token stream (``disable_entangle``); they act only through attention
biases: an absolute bias from ``pos_q_linear``/``pos_k_linear`` on layer-normed position embeddings
plus, per layer, a bucketed relative bias for text and another for image patches. None of these
depend on pixel values, so they are computed once per shape and shared by every image and beam.

Captioning runs ``encode`` once and then one decoder step at a time (``caption/ofa/generate.py``);
fine-tuning runs ``forward``, which decodes every target position at once under a causal mask
(teacher forcing) and gives the same logits as stepping (tested).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from caption.ofa.config import OFAConfig
from caption.ofa.layers import DecoderLayer, EncoderLayer, aligned_bias, dropout
from caption.ofa.positions import image_position_ids, image_rel_buckets, token_rel_buckets
from caption.ofa.resnet import ResNetEmbed


@dataclasses.dataclass
class EncoderOut:
    """What the decoder needs from the encoder: states (G, S, C) and normed positions (S, C)."""

    states: torch.Tensor
    positions: torch.Tensor


def _abs_bias(q_lin: nn.Linear, k_lin: nn.Linear, q_pos: torch.Tensor, k_pos: torch.Tensor, heads: int, scaling: float) -> torch.Tensor:
    """(Tq, C) x (Tk, C) normed position embeddings -> (H, Tq, Tk) absolute position bias."""
    q = q_lin(q_pos).unflatten(-1, (heads, -1)).transpose(0, 1) * scaling
    k = k_lin(k_pos).unflatten(-1, (heads, -1)).transpose(0, 1)
    return q @ k.transpose(-1, -2)


class OFAEncoder(nn.Module):
    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.cfg = cfg
        self.resnet = ResNetEmbed(cfg.resnet_layers)
        self.image_proj = nn.Linear(ResNetEmbed.out_channels, c)
        self.type_embedding = nn.Embedding(2, c) if cfg.add_type_embedding else None
        self.layernorm_embedding = nn.LayerNorm(c) if cfg.layernorm_embedding else None
        self.patch_layernorm_embedding = nn.LayerNorm(c) if cfg.patch_layernorm_embedding else None
        self.embed_positions = nn.Embedding(cfg.max_source_positions + 2, c)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size**2 + 1, c)
        self.pos_ln, self.image_pos_ln = nn.LayerNorm(c), nn.LayerNorm(c)
        self.pos_q_linear, self.pos_k_linear = nn.Linear(c, c), nn.Linear(c, c)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(c)
        self.token_rel_pos = nn.ModuleList(nn.Embedding(2 * cfg.token_bucket_size - 1, cfg.heads) for _ in range(cfg.encoder_layers))
        n_img = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.image_rel_pos = nn.ModuleList(nn.Embedding(n_img, cfg.heads) for _ in range(cfg.encoder_layers))
        # Official OFA builds this table for 1024 positions whatever max_source_positions says.
        self.register_buffer("token_buckets", token_rel_buckets(cfg.token_bucket_size), persistent=False)
        self.register_buffer("image_buckets", image_rel_buckets(cfg.image_bucket_size), persistent=False)
        self.dropout = 0.0  # on the embeddings, in training only (see OFAModel.set_dropout)

    def position_biases(self, grid: tuple[int, int], length: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normed positions (S, C) and one (1, H, S, S) self-attention bias per layer."""
        cfg = self.cfg
        dev = self.embed_positions.weight.device
        img_ids = image_position_ids(grid[0], grid[1], cfg.image_bucket_size).to(dev)
        txt_ids = torch.arange(length, device=dev)
        pos = torch.cat([self.image_pos_ln(self.embed_image_positions(img_ids)), self.pos_ln(self.embed_positions(txt_ids))])
        base = _abs_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, cfg.heads, float(cfg.head_dim * cfg.attn_scale_factor) ** -0.5)
        p = img_ids.numel()
        img_buckets = self.image_buckets[img_ids][:, img_ids]
        txt_buckets = self.token_buckets[:length, :length]
        biases = []
        for tok_table, img_table in zip(self.token_rel_pos, self.image_rel_pos):
            bias = base.clone()
            bias[:, p:, p:] += F.embedding(txt_buckets, tok_table.weight).permute(2, 0, 1)
            bias[:, :p, :p] += F.embedding(img_buckets, img_table.weight).permute(2, 0, 1)
            biases.append(aligned_bias(bias)[None])
        return pos, biases

    def forward(self, images: torch.Tensor, prompt: torch.Tensor) -> EncoderOut:
        """``images`` (B, 3, R, R) normalised pixels, ``prompt`` (L,) token ids shared by every image."""
        cfg = self.cfg
        scale = 1.0 if cfg.no_scale_embedding else cfg.embed_dim**0.5
        if self.resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last) and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.resnet(images)  # B, 1024, h, w
        grid = (feats.shape[-2], feats.shape[-1])
        pos, biases = self.position_biases(grid, prompt.numel())
        b = images.shape[0]

        img = self.image_proj(feats.flatten(2).transpose(1, 2)) * scale  # B, P, C
        txt = (self.embed_tokens(prompt) * scale)[None].expand(b, -1, -1)  # B, L, C
        if cfg.entangle_position_embedding:
            img = img + self.embed_image_positions(image_position_ids(*grid, cfg.image_bucket_size).to(img.device))
            txt = txt + self.embed_positions(torch.arange(prompt.numel(), device=img.device))
        if self.type_embedding is not None:
            img = img + self.type_embedding.weight[1]
            txt = txt + self.type_embedding.weight[0]
        if self.patch_layernorm_embedding is not None:
            img = self.patch_layernorm_embedding(img)
        if self.layernorm_embedding is not None:
            txt = self.layernorm_embedding(txt)
        x = dropout(torch.cat([img, txt.to(img.dtype)], dim=1), self.dropout, self.training)  # B, S, C
        for layer, bias in zip(self.layers, biases):
            x = layer(x, bias)
        return EncoderOut(states=self.layer_norm(x), positions=pos)

    embed_tokens: nn.Embedding  # set by OFAModel (shared with the decoder and the output projection)


class OFADecoder(nn.Module):
    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.cfg = cfg
        self.layernorm_embedding = nn.LayerNorm(c) if cfg.layernorm_embedding else None
        self.embed_positions = nn.Embedding(cfg.max_target_positions + 2, c)
        self.pos_ln = nn.LayerNorm(c)
        self.self_pos_q_linear, self.self_pos_k_linear = nn.Linear(c, c), nn.Linear(c, c)
        self.cross_pos_q_linear, self.cross_pos_k_linear = nn.Linear(c, c), nn.Linear(c, c)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(c)
        self.token_rel_pos = nn.ModuleList(nn.Embedding(2 * cfg.token_bucket_size - 1, cfg.heads) for _ in range(cfg.decoder_layers))
        self.register_buffer("token_buckets", token_rel_buckets(cfg.token_bucket_size), persistent=False)  # 1024, as above
        self.dropout = 0.0  # on the embeddings, in training only (see OFAModel.set_dropout)

    embed_tokens: nn.Embedding  # set by OFAModel

    def position_biases(self, length: int, enc_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self biases (layers, H, T, T) and the cross bias (H, T, S) for decoder positions ``0..length-1``."""
        cfg = self.cfg
        scaling = float(cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        tgt = self.pos_ln(self.embed_positions(torch.arange(length, device=enc_positions.device)))
        self_abs = _abs_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt, tgt, cfg.heads, scaling)
        buckets = self.token_buckets[:length, :length]
        self_bias = torch.stack([self_abs + F.embedding(buckets, t.weight).permute(2, 0, 1) for t in self.token_rel_pos])
        cross = _abs_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, tgt, enc_positions.to(tgt.dtype), cfg.heads, scaling)
        return self_bias, cross

    def embed(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """(N,) newest tokens at position ``step`` -> (N, 1, C)."""
        return self.embed_seq(tokens[:, None], step)

    def embed_seq(self, tokens: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(N, T) tokens at positions ``first .. first+T-1`` -> (N, T, C)."""
        cfg = self.cfg
        x = self.embed_tokens(tokens)
        if not cfg.no_scale_embedding:
            x = x * cfg.embed_dim**0.5
        if not cfg.disable_entangle:
            x = x + self.embed_positions.weight[first : first + tokens.shape[1]]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return dropout(x, self.dropout, self.training)

    def forward(self, tokens: torch.Tensor, enc: EncoderOut) -> torch.Tensor:
        """Teacher forcing: (B, T) decoder inputs (``bos`` + target, right-padded) -> (B, T, C) final
        states before the output layer norm. Position t sees inputs 0..t only, so right padding never
        reaches a real position and needs no mask."""
        t = tokens.shape[1]
        self_bias, cross_bias = self.position_biases(t, enc.positions)
        causal = torch.full((t, t), float("-inf"), device=tokens.device, dtype=self_bias.dtype).triu(1)
        self_bias = self_bias + causal
        cross_kv = [layer.cross_attn.kv(enc.states) for layer in self.layers]
        x = self.embed_seq(tokens)
        for i, layer in enumerate(self.layers):
            x = layer.forward_seq(x, aligned_bias(self_bias[i])[None], cross_kv[i], aligned_bias(cross_bias)[None])
        return x


class OFAModel(nn.Module):
    """The OFA encoder-decoder with one token embedding shared by encoder, decoder and output layer."""

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad)
        self.encoder = OFAEncoder(cfg)
        self.decoder = OFADecoder(cfg)
        # Plain attributes, not submodules, so the shared weight appears once in the state dict.
        object.__setattr__(self.encoder, "embed_tokens", self.embed_tokens)
        object.__setattr__(self.decoder, "embed_tokens", self.embed_tokens)
        self._init_weights()

    def _init_weights(self) -> None:
        """Random weights with sane scales (for tests and benchmarks; real use loads a checkpoint)."""
        c = self.cfg.embed_dim
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=c**-0.5 if module.weight.shape[1] == c else 0.02)
        with torch.no_grad():
            self.embed_tokens.weight[self.cfg.pad].zero_()

    def set_dropout(self, p: float) -> "OFAModel":
        """Dropout probability on the embeddings and every residual branch, as the official
        ``--dropout``; it acts in training mode only. Models load with 0."""
        for module in (self.encoder, self.decoder, *self.encoder.layers, *self.decoder.layers):
            module.dropout = float(p)
        return self

    def forward(self, images: torch.Tensor, prompt: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: ``images`` (B, 3, R, R), ``prompt`` (L,), ``prev_tokens`` (B, T) ->
        (B, T, V); row t predicts target token t (the token after ``prev_tokens[:, t]``)."""
        x = self.decoder(prev_tokens, self.encode(images, prompt))
        return F.linear(self.decoder.layer_norm(x), self.embed_tokens.weight)

    def prepare_for_inference(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> "OFAModel":
        """Fold the ResNet batch norms (in the current precision), move and cast, and on GPU switch the
        ResNet to channels-last, cuDNN's fast layout. Call after loading weights: the state dict loses
        its ``bn`` keys. Outputs are unchanged up to rounding.
        """
        self.eval()
        self.encoder.resnet.fold_batchnorm()
        self.to(device=device, dtype=dtype)
        if torch.device(device).type == "cuda":
            self.encoder.resnet.to(memory_format=torch.channels_last)
        return self

    def encode(self, images: torch.Tensor, prompt: torch.Tensor) -> EncoderOut:
        return self.encoder(images, prompt)

    def cross_kv(self, enc: EncoderOut) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, encoder K and V (G, H, S, D): computed once, reused for every step."""
        return [layer.cross_attn.kv(enc.states) for layer in self.decoder.layers]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, C) final decoder states -> (N, V) logits through the shared embedding."""
        return F.linear(self.decoder.layer_norm(x[:, 0]), self.embed_tokens.weight)
