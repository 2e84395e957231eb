"""CLIP-ViP: CLIP whose vision tower reads a whole video through video proxy tokens.

Shape legend: B batch, T frames, C=3 channels, S image side, P patch side, L = (S/P)^2 patches per
frame, M video proxies, N tokens, D tower width, E joint embedding width, K text length.

Module and parameter names follow HF ``transformers`` CLIP (``vision_model.pre_layrnorm`` included)
so HF CLIP and official CLIP-ViP state dicts map 1:1; only ``vision_model.embeddings.added_cls``
and ``vision_model.embeddings.temporal_embedding`` are new (the extra class token of the
video proxies and the learned per-frame embedding CLIP-ViP adds).

With proxy-guided attention the vision tower keeps its tokens in the "framed" layout of
``model.attention`` (the M proxies repeated before each frame's patches, copies kept equal), which
is mathematically the official model (tests check it against the dense block-masked tower, values
and gradients) but needs no per-layer key gathering. Token 0 is proxy 0 in every layout.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import Attention

ATTENTION_MODES = ("proxy", "joint", "meanpool")


@dataclasses.dataclass(kw_only=True)
class CLIPViPConfig:
    """Architecture of a CLIP-ViP model; the defaults are ViT-B/32 with CLIP's text tower."""

    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int | None = None  # MLP hidden size; None means mlp_ratio * width
    mlp_ratio: int = 4
    vocab_size: int = 49408
    context_length: int = 77  # positions of the text tower; callers truncate to 70 or 50
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp: int | None = None
    embed_dim: int = 512
    num_proxies: int = 4  # proxy 0 is CLIP's class token, the rest are ``added_cls``
    temporal_size: int = 12
    attention: str = "proxy"  # "proxy" | "joint" | "meanpool"
    logit_scale_init: float = 4.60
    # The official init is zeros, right for CLIP weights (frames start exactly as CLIP sees them). A
    # model trained from scratch sits at a saddle there: with no temporal signal the video tower is
    # blind to frame order and order gets almost no gradient, so such runs may start at N(0, std).
    temporal_init_std: float = 0.0
    eot_token_id: int = 49407
    hidden_act: str = "quick_gelu"  # or "gelu" (some non-OpenAI CLIPs)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention={self.attention!r}: choose one of {ATTENTION_MODES}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_proxies < 1:
            raise ValueError(f"num_proxies={self.num_proxies}: need at least 1 (the class token)")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r}: choose one of {sorted(_ACTIVATIONS)}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"quick_gelu": _quick_gelu, "gelu": F.gelu}

_VIT_B = dict(vision_width=768, vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8,
              embed_dim=512)
FLAVOURS: dict[str, dict] = {
    # Tiny, for CPU tests and the debug run: 16 patches per frame, 4 + 12*16 = 196 video tokens.
    "debug": dict(image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4, text_width=64,
                  text_layers=2, text_heads=4, embed_dim=32),
    "B/32": dict(patch_size=32, **_VIT_B),
    "B/16": dict(patch_size=16, **_VIT_B),
    "L/14": dict(patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16, text_width=768,
                 text_layers=12, text_heads=12, embed_dim=768),
}


def get_config(name: str, **overrides) -> CLIPViPConfig:
    """The named flavour (``FLAVOURS``) with keyword overrides, e.g. ``get_config("B/16", attention="joint")``."""
    if name not in FLAVOURS:
        raise ValueError(f"unknown model flavour {name!r}: choose one of {sorted(FLAVOURS)}")
    return CLIPViPConfig(**{**FLAVOURS[name], **overrides})


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.act = _ACTIVATIONS[act]
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer block with HF CLIP names."""

    def __init__(self, width: int, heads: int, mlp: int, act: str, eps: float):
        super().__init__()
        self.self_attn = Attention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mode: str, num_proxies: int, num_frames: int,
                mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mode, num_proxies, num_frames, mask, causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int, act: str, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(width, heads, mlp, act, eps) for _ in range(layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, mode: str = "full", num_proxies: int = 0, num_frames: int = 1,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, mode, num_proxies, num_frames, mask, causal, use_reentrant=False)
            else:
                x = layer(x, mode, num_proxies, num_frames, mask, causal)
        return x


class VisionEmbeddings(nn.Module):
    """Proxy tokens plus patch tokens with spatial and (interpolated) temporal embeddings."""

    def __init__(self, cfg: CLIPViPConfig):
        super().__init__()
        d = cfg.vision_width
        self.meanpool = cfg.attention == "meanpool"
        self.class_embedding = nn.Parameter(torch.randn(d) * d**-0.5)
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, d)
        if not self.meanpool:  # the CLIP4Clip baseline is plain CLIP: no new parameters
            self.added_cls = nn.Parameter(torch.randn(cfg.num_proxies - 1, d))  # N(0,1), as the official code
            self.temporal_embedding = nn.Parameter(torch.randn(1, cfg.temporal_size, d) * cfg.temporal_init_std)

    def temporal(self, num_frames: int) -> torch.Tensor:
        """The temporal table resampled to ``num_frames`` entries: [1, T, D]."""
        table = self.temporal_embedding  # [1,12,D]
        if num_frames == table.shape[1]:
            return table
        # Linear, align_corners=False: T=1 takes 0.5 * (t5 + t6), the middle of the 12 entries.
        return F.interpolate(table.transpose(1, 2), size=num_frames, mode="linear",
                             align_corners=False).transpose(1, 2)

    def forward(self, pixels: torch.Tensor, framed: bool = True) -> torch.Tensor:
        """Tokens of ``pixels`` [B, T, C, S, S].

        Returns:
            proxy attention (``framed``): [B, T*(M+L), D], the M proxies repeated before every frame's
            L patches (see ``model.attention``); joint (``framed=False``): the official flat layout
            [B, M + T*L, D]; meanpool: [B*T, 1 + L, D], plain CLIP tokens per frame.
        """
        b, t = pixels.shape[:2]
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixels.flatten(0, 1).to(dtype))  # [BT,D,S/P,S/P]
        patches = patches.flatten(2).transpose(1, 2)  # [BT,L,D]
        pos = self.position_embedding.weight  # [L+1,D]
        if self.meanpool:
            cls = (self.class_embedding + pos[0]).expand(b * t, 1, -1)  # [BT,1,D]
            return torch.cat([cls.to(patches.dtype), patches + pos[1:]], dim=1)
        l, d = patches.shape[1:]
        patches = patches.reshape(b, t, l, d) + pos[1:] + self.temporal(t)[0, :, None, :]  # [B,T,L,D]
        # All proxies take the CLS-slot position embedding and no temporal embedding.
        proxies = (torch.cat([self.class_embedding[None], self.added_cls]) + pos[0]).to(patches.dtype)  # [M,D]
        m = proxies.shape[0]
        if framed:
            return torch.cat([proxies.expand(b, t, m, d), patches], dim=2).reshape(b, t * (m + l), d)
        return torch.cat([proxies.expand(b, m, d), patches.reshape(b, t * l, d)], dim=1)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPViPConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.vision_width
        self.embeddings = VisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)  # sic, HF's name
        self.encoder = Encoder(d, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp or cfg.mlp_ratio * d,
                               cfg.hidden_act, cfg.layer_norm_eps)
        self.post_layernorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, T, C, S, S] -> pooled [B, D] (proxy 0; token 0 in every layout), or [B*T, D] for meanpool."""
        if pixels.dim() != 5:
            raise ValueError(f"pixel_values must be [B, T, 3, H, W], got shape {tuple(pixels.shape)}")
        side = self.cfg.image_size
        if pixels.shape[-2:] != (side, side):
            raise ValueError(f"frames are {tuple(pixels.shape[-2:])} but this model takes {side}x{side}: resize first")
        mode = self.cfg.attention
        x = self.pre_layrnorm(self.embeddings(pixels, framed=mode == "proxy"))
        if mode == "proxy":
            x = self.encoder(x, "proxy", self.cfg.num_proxies, pixels.shape[1])
        else:  # "joint": dense over all tokens; "meanpool": dense within each frame
            x = self.encoder(x)
        return self.post_layernorm(x[:, 0])


class TextTransformer(nn.Module):
    def __init__(self, cfg: CLIPViPConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.text_width
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(cfg.vocab_size, d)
        self.embeddings.position_embedding = nn.Embedding(cfg.context_length, d)
        self.encoder = Encoder(d, cfg.text_layers, cfg.text_heads, cfg.text_mlp or cfg.mlp_ratio * d,
                               cfg.hidden_act, cfg.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, K] -> the final-normed state at the first end-of-text token [B, D]."""
        b, k = ids.shape
        if k > self.cfg.context_length:
            raise ValueError(f"text length {k} exceeds context_length {self.cfg.context_length}: tokenize with "
                             f"max_length <= {self.cfg.context_length}")
        emb = self.embeddings
        x = emb.token_embedding(ids) + emb.position_embedding.weight[:k]  # [B,K,D]
        mask = None
        if attention_mask is not None:
            causal = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril()
            # The diagonal stays open so a left-padded row never has an empty softmax (NaN).
            mask = causal & (attention_mask[:, None, None, :].bool() | torch.eye(k, dtype=torch.bool, device=ids.device))
        x = self.final_layer_norm(self.encoder(x, mask=mask, causal=True))
        is_eot = ids == self.cfg.eot_token_id
        # First end-of-text; a row without one (over-long text truncated by hand) pools its last token.
        last = (attention_mask.sum(-1) - 1) if attention_mask is not None else torch.full_like(ids[:, 0], k - 1)
        pos = torch.where(is_eot.any(-1), is_eot.int().argmax(-1), last)
        return x[torch.arange(b, device=ids.device), pos]


class CLIPViP(nn.Module):
    """The CLIP-ViP dual encoder; see the module docstring for names and shapes."""

    def __init__(self, cfg: CLIPViPConfig):
        super().__init__()
        self.config = cfg
        self.text_model = TextTransformer(cfg)
        self.vision_model = VisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Random init only matters for tests and benchmarks; real runs load CLIP weights.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            fan_in = module.weight[0].numel() if not isinstance(module, nn.Embedding) else module.weight.shape[1]
            nn.init.normal_(module.weight, std=0.02 if isinstance(module, nn.Embedding) else fan_in**-0.5)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.vision_model.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.vision_model.encoder.gradient_checkpointing = bool(on)
        self.text_model.encoder.gradient_checkpointing = bool(on)

    def encode_video(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Video features [B, E] from ``pixel_values`` [B, T, 3, S, S] (CLIP-normalised pixels).

        For the mean-pool baseline ``normalize=False`` returns the mean of the normalised frame features.
        """
        b, t = pixel_values.shape[:2]
        pooled = self.vision_model(pixel_values)
        feats = self.visual_projection(pooled)
        if self.config.attention == "meanpool":
            # CLIP4Clip baseline: normalise per frame, average over time, normalise again.
            feats = F.normalize(feats, dim=-1).view(b, t, -1).mean(1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_frames(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image / single-frame features [B, E] from [B, 3, S, S]: the video tower with T=1."""
        if pixel_values.dim() != 4:
            raise ValueError(f"frames must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        return self.encode_video(pixel_values[:, None], normalize)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """Text features [B, E] from token ids [B, K] (and their padding mask)."""
        feats = self.text_projection(self.text_model(input_ids, attention_mask))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, video: torch.Tensor | None = None, frames: torch.Tensor | None = None,
                subtitle_ids: torch.Tensor | None = None, subtitle_mask: torch.Tensor | None = None,
                caption_ids: torch.Tensor | None = None, caption_mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """Normalised features for whichever inputs are given, plus the raw ``logit_scale``."""
        out: dict[str, torch.Tensor] = {"logit_scale": self.logit_scale}
        if video is not None:
            out["video_features"] = self.encode_video(video)
        if frames is not None:
            out["frame_features"] = self.encode_frames(frames)
        if subtitle_ids is not None and caption_ids is not None and subtitle_ids.shape == caption_ids.shape:
            # One text pass over both sets keeps the GEMMs twice as large.
            if (subtitle_mask is None) != (caption_mask is None):
                raise ValueError("give both subtitle_mask and caption_mask, or neither")
            ids = torch.cat([subtitle_ids, caption_ids])
            masks = None if subtitle_mask is None else torch.cat([subtitle_mask, caption_mask])
            both = self.encode_text(ids, masks)
            out["subtitle_features"], out["caption_features"] = both.split(subtitle_ids.shape[0])
        else:
            if subtitle_ids is not None:
                out["subtitle_features"] = self.encode_text(subtitle_ids, subtitle_mask)
            if caption_ids is not None:
                out["caption_features"] = self.encode_text(caption_ids, caption_mask)
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def video_flops_per_clip(cfg: CLIPViPConfig, frames: int, text_len: int, texts: int = 1) -> float:
    """Forward+backward FLOPs (3x forward; matmuls and attention) for one clip and its texts."""
    def tower(n: int, width: int, layers: int, mlp: int, attn_pairs: float) -> float:
        dense = 2 * n * width * (4 * width + 2 * mlp)  # qkv+out projections and MLP, multiply-add = 2
        return layers * (dense + 4 * attn_pairs * width)  # QK^T and PV over the attended pairs
    m, l, t = cfg.num_proxies, cfg.num_patches, frames
    dv, dt = cfg.vision_width, cfg.text_width
    if cfg.attention == "proxy":
        n, pairs = m + t * l, m * (m + t * l) + t * l * (m + l)
    elif cfg.attention == "joint":
        n = m + t * l
        pairs = n * n
    else:
        n, pairs = t * (1 + l), t * (1 + l) ** 2
    vision = tower(n, dv, cfg.vision_layers, cfg.vision_mlp or cfg.mlp_ratio * dv, pairs)
    vision += 2 * t * l * 3 * cfg.patch_size**2 * dv  # patch embedding
    text = tower(text_len, dt, cfg.text_layers, cfg.text_mlp or cfg.mlp_ratio * dt, text_len * (text_len + 1) / 2)
    return 3.0 * (vision + texts * text)


