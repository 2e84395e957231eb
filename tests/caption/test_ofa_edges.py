"""The OFA port's edges: damaged weights, half-precision overflow, the file modes of what it writes.

- a checkpoint (converted or official) whose weights hold NaN or inf is refused in one line naming
  the file and the tensors, NaN named as NaN, also in the shared token embedding (its three saved
  copies hold their NaNs in the same places);
- NaN log-probabilities from finite weights in half precision are the user's to fix (fp32): one
  line naming the image files; in fp32 they are a fault here, with a traceback and no "try fp32";
- converted and fine-tuned models get the umask's file modes, so other accounts can read them.

Run: .venv/bin/python -m pytest tests/caption/test_ofa_edges.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caption.ofa.beam import BeamSearchError
from caption.ofa.captioner import OFACaptioner
from caption.ofa.checkpoint import load_converted, read_fairseq_checkpoint, save_converted
from common.errors import UserError
from demo.tiny_ofa import write_tiny_ofa
from jobs import cli

from tests.caption.test_ofa_checkpoint import write_official


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_ofa(tmp_path_factory.mktemp("tiny_ofa"), seed=0)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def _variant(tiny_dir: Path, out: Path, key: str, change) -> Path:
    """A copy of the tiny model with one tensor changed, saved the way conversion saves."""
    cfg, state, meta = load_converted(tiny_dir)
    shutil.copytree(tiny_dir, out)
    state = dict(state)
    state[key] = change(state[key].clone())
    save_converted(out, cfg, state, meta)
    return out


def _one_error_line(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_nan_weights_are_refused_in_one_line_naming_the_file_and_tensor(tiny_dir, image_files, tmp_path, capsys):
    def poison(t):
        t[0] = float("nan")
        t[1] = float("inf")
        return t

    broken = _variant(tiny_dir, tmp_path / "nan", "decoder.layer_norm.bias", poison)
    with pytest.raises(UserError, match=r"nan/model.safetensors: the weights hold NaN or inf in 1 tensor\(s\) "
                                        r"\(decoder.layer_norm.bias: 1 NaN, 1 inf\)"):
        OFACaptioner(str(broken), device="cpu")
    line = _one_error_line(["caption", "images", "--model", f"ofa:{broken}", *map(str, image_files)], capsys)
    assert line.startswith("clipvip caption: error: ") and str(broken / "model.safetensors") in line
    assert "decoder.layer_norm.bias: 1 NaN, 1 inf" in line


def test_nan_in_the_shared_embedding_is_named_as_nan(tiny_dir, tmp_path, capsys):
    """Official OFA saves its one token embedding three times; NaN in it is damage, not a mismatch."""
    pt = write_official(tiny_dir, tmp_path / "caption_tiny.pt")
    ckpt = torch.load(pt, weights_only=False)
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight"):
        ckpt["model"][key][7, :3] = float("nan")
    torch.save(ckpt, pt)
    with pytest.raises(UserError) as info:
        read_fairseq_checkpoint(pt)
    assert "embed_tokens.weight: 3 NaN" in str(info.value) and "differs" not in str(info.value)
    line = _one_error_line(["caption", "convert-ofa", str(pt), str(tmp_path / "out"), "--bpe-dir", str(tiny_dir)],
                           capsys)
    assert str(pt) in line and "embed_tokens.weight: 3 NaN" in line
    assert not (tmp_path / "out").exists()
    # Copies that really differ are still named as such.
    ckpt["model"]["decoder.output_projection.weight"][8, 0] += 1.0
    torch.save(ckpt, pt)
    with pytest.raises(UserError, match="decoder.output_projection.weight differs from encoder.embed_tokens.weight"):
        read_fairseq_checkpoint(pt)


@pytest.fixture(scope="module")
def overflows_in_fp16(tiny_dir, tmp_path_factory) -> Path:
    """Finite weights whose activations exceed float16's range (65504) but not float32's."""
    return _variant(tiny_dir, tmp_path_factory.mktemp("big") / "model", "decoder.layers.0.ffn.fc2.weight",
                    lambda t: t * 3e4)


def test_half_precision_overflow_names_the_image_files_and_the_fix(overflows_in_fp16, image_files, capsys):
    line = _one_error_line(["caption", "images", "--model", f"ofa:{overflows_in_fp16}", "--precision", "fp16",
                            "--batch-size", "2", *map(str, image_files)], capsys)
    assert f"NaN log-probabilities for 2 image(s) ({image_files[0]}, {image_files[1]})" in line
    assert "fp16 overflowed" in line and "--precision fp32" in line
    capsys.readouterr()
    assert cli.main(["caption", "images", "--model", f"ofa:{overflows_in_fp16}", "--precision", "fp32",
                     *map(str, image_files)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_nan_from_finite_weights_in_fp32_is_a_fault_with_a_traceback(tiny_dir):
    captioner = OFACaptioner(str(tiny_dir), device="cpu", batch_size=2)
    with torch.no_grad():
        captioner.model.decoder.layer_norm.bias.fill_(float("nan"))  # what a bug in the port would do
    frames = [np.full((32, 32, 3), 50 * i, dtype=np.uint8) for i in range(3)]
    with pytest.raises(BeamSearchError) as info:
        captioner.generate(frames, names=["x.jpg", "y.jpg", "z.jpg"])
    assert not isinstance(info.value, UserError)  # so the CLI shows its traceback
    message = str(info.value)
    assert "left 2 image(s) without a caption (x.jpg, y.jpg): NaN log-probabilities from finite weights" in message
    assert "try fp32" not in message and info.value.sentences == [0, 1] and info.value.nan == [0, 1]
    with pytest.raises(BeamSearchError, match=r"\(image 0 of this call, image 1 of this call\)"):
        captioner.generate(frames)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["022", "027"])
def test_converted_and_fine_tuned_models_get_the_umask_modes(tiny_dir, tmp_path, mask):
    from caption.ofa.finetune import CaptionDataConfig, CaptionFinetuneConfig, run

    pt = write_official(tiny_dir, tmp_path / "caption_tiny.pt")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": str(tmp_path / "red.png"), "caption": "red"}) + "\n")
    old = os.umask(mask)
    try:
        assert cli.main(["caption", "convert-ofa", str(pt), str(tmp_path / "converted"), "--bpe-dir", str(tiny_dir)]) == 0
        run(CaptionFinetuneConfig(model=f"ofa:{tmp_path / 'converted'}", out_dir=str(tmp_path / "tuned"), steps=1,
                                  batch_size=1, data=CaptionDataConfig(manifest=str(tmp_path / "pairs.jsonl"))))
    finally:
        os.umask(old)
    for folder in (tmp_path / "converted", tmp_path / "tuned"):
        modes = _modes(folder)
        assert modes.pop(folder.name) == 0o777 & ~mask
        assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~mask}, modes
