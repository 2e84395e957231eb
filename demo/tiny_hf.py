"""Toy stock-transformers captioners for offline tests, benchmarks and the demo.

``write_debug_model`` saves one of the families ``caption.hf`` serves (BLIP by default, or GIT, or
ViT + GPT-2) at toy size with random weights and an offline tokenizer, so that ``hf:<folder>``
captions without any download. The captions are words from ``DEBUG_WORDS`` in no meaningful order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEBUG_WORDS = ("a", "an", "the", "red", "green", "blue", "yellow", "purple", "cyan", "white", "orange", "circle",
               "square", "triangle", "moving", "left", "right", "up", "down", "on", "background", "shape", "of",
               "with", "and", "small", "large", "bright", "dark", "picture", "video", "frame")


def write_debug_model(out_dir: str | Path, seed: int = 0, image_size: int = 32, arch: str = "blip") -> Path:
    """Save a random-weight toy captioner (real architecture, tiny sizes, offline tokenizer) to ``out_dir``.

    ``arch``: ``blip`` (BlipForConditionalGeneration + BlipProcessor), ``git`` (GitForCausalLM +
    GitProcessor) or ``vision-encoder-decoder`` (ViT + GPT-2 with its own byte-level BPE, no processor
    class: the image processor and tokenizer are saved side by side, as such checkpoints ship).
    """
    writers = {"blip": _write_blip, "git": _write_git, "vision-encoder-decoder": _write_vit_gpt2}
    if arch not in writers:
        raise ValueError(f"unknown debug captioner {arch!r}; choose one of {sorted(writers)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.manual_seed(seed)
    return writers[arch](out, image_size)


_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def _bert_tokenizer(out: Path, **kwargs: Any) -> tuple[Any, dict[str, int]]:
    """A word-level BERT tokenizer over the debug words, and the ids of its special tokens."""
    from transformers import BertTokenizer

    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(_BERT_SPECIALS + list(DEBUG_WORDS)) + "\n")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True, **kwargs)
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in _BERT_SPECIALS}


def _write_blip(out: Path, image_size: int) -> Path:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer, ids = _bert_tokenizer(out, bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(_BERT_SPECIALS) + len(DEBUG_WORDS), hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, encoder_hidden_size=32,
                pad_token_id=ids["[PAD]"], bos_token_id=ids["[DEC]"], sep_token_id=ids["[SEP]"],
                eos_token_id=ids["[SEP]"])
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  image_size=image_size, patch_size=8)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    with torch.no_grad():
        # Random heads often prefer special tokens; push them down so captions are real words.
        model.text_decoder.cls.predictions.bias[: len(_BERT_SPECIALS)] = -10.0
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _write_git(out: Path, image_size: int) -> Path:
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tokenizer, ids = _bert_tokenizer(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        vocab_size=len(_BERT_SPECIALS) + len(DEBUG_WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=ids["[PAD]"], bos_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"])
    model = GitForCausalLM(config).eval()
    model.generation_config.suppress_tokens = [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]")]
    model.save_pretrained(out)
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def _write_vit_gpt2(out: Path, image_size: int) -> Path:
    from transformers import (GPT2Config, GPT2TokenizerFast, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    from common.bpe import bytes_to_unicode

    # A byte-level BPE whose merges spell exactly the debug words (with GPT-2's leading-space marker).
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab, merges = {c: i for i, c in enumerate(byte_chars)}, []
    for word in DEBUG_WORDS:
        piece = byte_chars[ord(" ")]
        for ch in word:
            if (piece, ch) not in merges:
                merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    eos = vocab.setdefault("<|endoftext|>", len(vocab))
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    encoder = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=image_size, patch_size=8)
    decoder = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64, is_decoder=True,
                         add_cross_attention=True, bos_token_id=eos, eos_token_id=eos)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    model = VisionEncoderDecoderModel(config).eval()
    gen = model.generation_config
    gen.decoder_start_token_id = gen.pad_token_id = gen.eos_token_id = eos
    gen.suppress_tokens = list(range(256))  # random weights otherwise spell bytes, not words
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out

