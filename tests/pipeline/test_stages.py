"""The stages as plain functions on pandas batches (pipeline/stages.py), no Ray. Run:
``.venv/bin/python -m pytest tests/pipeline/test_stages.py -q``."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from PIL import Image

from caption.protocol import DecodeSettings
from pipeline import stages
from pipeline.frames import FrameConfig
from pipeline.manifest import ManifestConfig, scan_local


@pytest.fixture()
def batch(curate_manifest):
    df = pd.DataFrame(scan_local(ManifestConfig(path=str(curate_manifest))))
    keep = ["clip000004", "clip000000", "broken_truncated", "broken_missing", "broken_empty_text", "broken_span"]
    return df[df["key"].isin(keep)].reset_index(drop=True)


def test_check_text_then_decode(batch):
    out = stages.decode_clips(stages.check_text(batch.copy()), FrameConfig())
    by_key = out.set_index("key")
    assert set(stages.DECODE_OUTPUTS) <= set(out.columns)
    assert by_key.loc["broken_empty_text", "error"].startswith("empty text")
    assert "InvalidDataError" in by_key.loc["broken_truncated", "error"]
    assert "FileNotFoundError" in by_key.loc["broken_missing", "error"]
    assert "outside the video" in by_key.loc["broken_span", "error"]
    for key in ("clip000004", "clip000000"):
        row = by_key.loc[key]
        assert row["status"] == "ok" and row["error"] == ""
        assert Image.open(io.BytesIO(row["jpg"])).format == "JPEG" and row["mp4"][4:8] == b"ftyp"
        meta = json.loads(row["clip"])
        assert meta["start"] <= meta["middle_time"] < meta["end"]
    # The empty-text row was never decoded (failed rows skip the work).
    assert by_key.loc["broken_empty_text", "decode_s"] == 0.0 and by_key.loc["broken_empty_text", "jpg"] == b""
    assert list(out["key"]) == list(batch["key"])


def test_caption_stage_captions_ok_rows_only(batch, tmp_path):
    from demo.tiny_hf import write_debug_model

    model = write_debug_model(tmp_path / "blip")
    decoded = stages.decode_clips(stages.check_text(batch.copy()), FrameConfig())
    stage = stages.CaptionStage(stages.CaptionConfig(model=f"hf:{model}", device="cpu",
                                                     decode=DecodeSettings(beam=2, max_new_tokens=6)))
    with pytest.raises(ValueError, match=r"sent column\(s\) .*'mp4'"):
        stage(decoded)  # the stage takes frames and keys only, never the clips
    out = stage(decoded[list(stages.CAPTION_INPUTS)])
    assert list(out.columns) == list(stages.CAPTION_OUTPUTS)  # the frames do not travel back
    ok = out["status"] == "ok"
    assert ok.sum() == 2 and (out.loc[ok, "caption"].str.len() > 0).all()
    assert (out.loc[~ok, "caption"] == "").all()
    info = json.loads(out["caption_info"].iloc[0])
    assert info["model"] == f"hf:{model}" and info["settings"]["beam"] == 2
    assert info["weights_sha256"]["model.safetensors"]


def test_empty_caption_fails_the_row():
    class Silent:
        name = "silent"

        def generate(self, images):
            return ["" for _ in images]

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    stage = stages.CaptionStage.__new__(stages.CaptionStage)
    stage.captioner, stage.info = Silent(), "{}"
    out = stage(pd.DataFrame({"key": ["k"], "jpg": [buf.getvalue()], "status": ["ok"], "error": [""]}))
    assert out.loc[0, "status"] == "failed" and out.loc[0, "error"].startswith("empty caption")
