"""The CLIP-ViP trainer: the loop, set-up, data loading, checkpoints, logs, optimizer, evaluation.

Kept apart from ``model/`` (the network, losses, metrics, weight conversion and tokenizer, which
need only torch and safetensors), as open_clip keeps ``open_clip_train`` apart from ``open_clip``.
"""
