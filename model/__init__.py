"""CLIP-ViP model, OCL losses, retrieval metrics, tokenizer (importable with torch + numpy only)."""

from model.clip_vip import CLIPViP, CLIPViPConfig, FLAVOURS, get_config, video_flops_per_clip
from model.convert import (from_hf_clip, load_checkpoint, load_official_clipvip, save_checkpoint)
from model.loss import OCLLoss, clamp_logit_scale_, gather_with_grad
from model.metrics import dsl_similarity, evaluate_all, retrieval_metrics

__all__ = ["CLIPViP", "CLIPViPConfig", "FLAVOURS", "get_config", "video_flops_per_clip", "from_hf_clip",
           "load_checkpoint", "load_official_clipvip", "save_checkpoint", "OCLLoss", "clamp_logit_scale_",
           "gather_with_grad", "dsl_similarity", "evaluate_all", "retrieval_metrics"]
