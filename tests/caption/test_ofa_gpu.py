"""The OFA port on a CUDA device: the path captioning at scale takes (folded batch norms, channels-last
ResNet, bf16 weights, the host one beam step ahead of the device).

Run on a GPU machine: python -m pytest -m gpu tests/caption/test_ofa_gpu.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caption.ofa.captioner import OFACaptioner
from demo.tiny_ofa import write_tiny_ofa
from caption.protocol import DecodeSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_ofa(tmp_path_factory.mktemp("tiny_ofa_gpu"), seed=0)


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (48, 64 + 8 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fp32_on_gpu_gives_the_cpu_captions(tiny_dir, strict_fp32):
    images = frames(12)
    cpu = OFACaptioner(str(tiny_dir), device="cpu", batch_size=5)
    gpu = OFACaptioner(str(tiny_dir), device="cuda", precision="fp32", batch_size=5)
    assert gpu.model.encoder.resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert gpu.generate_tokens(images) == cpu.generate_tokens(images)
    a = cpu.generator.generate(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    b = gpu.generator.generate(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for ha, hb in zip(a, b):
        assert [h.tokens for h in ha] == [h.tokens for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)


def test_shared_and_per_beam_agree_on_gpu(tiny_dir, strict_fp32):
    images = frames(9)
    shared = OFACaptioner(str(tiny_dir), device="cuda", precision="fp32")
    per_beam = OFACaptioner(str(tiny_dir), device="cuda", precision="fp32", share_encoder=False)
    assert shared.generate_tokens(images) == per_beam.generate_tokens(images)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_captions_are_well_formed(tiny_dir, precision):
    captioner = OFACaptioner(str(tiny_dir), device="cuda", precision=precision, settings=DecodeSettings(max_new_tokens=7))
    assert captioner.model.embed_tokens.weight.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    tokens = captioner.generate_tokens(frames(6))
    assert len(tokens) == 6 and all(1 <= len(t) - 1 <= 7 and t[-1] == captioner.tokenizer.eos for t in tokens)
    assert all(captioner.generate(frames(2))) and captioner.describe()["decode"]["precision"] == precision
