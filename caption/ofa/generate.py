"""Caption generation: encode each image once, then beam search with cached decoder state.

Shape legend: B images, K beams, N = B*K hypotheses, G attention groups, S encoder positions,
T decoder positions (``max_len + 1``), H heads, D head dim.

Two modes, identical in output:

- ``share_encoder=True`` (default): the encoder runs on B images; cross-attention K/V are projected
  once per image and the K beams of an image attend them as K queries of one group (G = B).
- ``share_encoder=False``: fairseq's way, kept as the benchmark baseline: images are repeated per
  beam before the encoder (G = N) and the per-hypothesis cross K/V are reordered every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caption.ofa.beam import BeamConfig, Hypothesis, beam_search
from caption.ofa.layers import aligned_bias
from caption.ofa.model import OFAModel


class OFAGenerator:
    """Runs ``OFAModel`` under ``beam_search`` for a fixed prompt."""

    def __init__(
        self,
        model: OFAModel,
        prompt: torch.Tensor,
        beam: BeamConfig,
        *,
        share_encoder: bool = True,
        temperature: float = 1.0,
    ) -> None:
        self.model = model
        self.prompt = prompt
        self.beam = beam
        self.share_encoder = share_encoder
        self.temperature = temperature

    @torch.inference_mode()
    def generate(self, pixels: torch.Tensor) -> list[list[Hypothesis]]:
        """``pixels`` (B, 3, R, R) normalised images -> per image, finalised hypotheses best first."""
        model, k = self.model, self.beam.beam
        param = model.embed_tokens.weight
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        prompt = self.prompt.to(param.device)
        b = pixels.shape[0]
        n, t_max = b * k, self.beam.max_len + 1
        enc = model.encode(pixels if self.share_encoder else pixels.repeat_interleave(k, 0), prompt)
        cross_kv = model.cross_kv(enc)
        self_bias, cross_bias = model.decoder.position_biases(t_max, enc.positions)
        self_bias, cross_bias = aligned_bias(self_bias), aligned_bias(cross_bias)
        cfg = model.cfg
        caches = [
            (param.new_zeros(n, cfg.heads, t_max, cfg.head_dim), param.new_zeros(n, cfg.heads, t_max, cfg.head_dim))
            for _ in model.decoder.layers
        ]

        def step_fn(tokens: torch.Tensor, step: int, reorder: torch.Tensor | None) -> torch.Tensor:
            nonlocal cross_kv
            if reorder is not None:
                for k_cache, v_cache in caches:
                    k_cache[:, :, :step] = k_cache[reorder, :, :step]
                    v_cache[:, :, :step] = v_cache[reorder, :, :step]
                if not self.share_encoder:
                    cross_kv = [(ck[reorder], cv[reorder]) for ck, cv in cross_kv]
            x = model.decoder.embed(tokens[:, -1], step)
            for i, layer in enumerate(model.decoder.layers):
                x = layer(
                    x, step, caches[i],
                    self_bias[i, :, step : step + 1, : step + 1][None],
                    cross_kv[i],
                    cross_bias[:, step : step + 1][None],
                )
            logits = model.logits(x).float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            return F.log_softmax(logits, dim=-1)

        return beam_search(step_fn, b, cfg.vocab_size, self.beam, device=param.device)
