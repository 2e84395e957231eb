"""train/data.py: a cut-off or missing shard is reported by its URL, not by the stream object
webdataset read it through (``<fsspec...LocalFileOpener object at 0x...>``).

Run: .venv/bin/python -m pytest tests/train/test_shard_warning.py -q
"""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

from train.data import ShardDataConfig, ShardLoader
from shards.format import expand_pattern, raw_samples


def _cut_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        for i in range(4):
            for ext in ("mp4", "txt"):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = 5000
                tf.addfile(info, io.BytesIO(bytes(5000)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2 + 77])
    return path


def test_shard_errors_name_the_url(tmp_path):
    cut, missing = _cut_tar(tmp_path / "cut.tar"), tmp_path / "missing.tar"
    errors: list[str] = []
    keys = [s["__key__"] for s in raw_samples([str(cut), str(missing)], lambda e: errors.append(str(e)))]
    assert keys and len(errors) == 2
    assert errors[0].startswith(f"{cut}: ") and "end of data" in errors[0]
    assert errors[1].startswith(f"{missing}: ")
    assert not any("LocalFileOpener" in e or " object at 0x" in e for e in errors)


def test_the_trainer_loader_warning_names_the_cut_shard(synth_shards, synth_tokenizer, tmp_path, caplog):
    urls = expand_pattern(synth_shards)
    for u in urls[:2]:
        shutil.copy(u, tmp_path / Path(u).name)
    cut = tmp_path / Path(urls[1]).name
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2 + 77])
    pattern = str(tmp_path / Path(urls[0]).name) + "::" + str(cut)
    cfg = ShardDataConfig(shards=pattern, batch_size=1, num_workers=0, num_frames=4, image_size=32, max_text_len=16,
                          shuffle_buffer=0)
    loader = ShardLoader(cfg, synth_tokenizer)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        while loader.state.bad_shards == 0:
            next(loader)
    warnings = [r.getMessage() for r in caplog.records if "unreadable shard" in r.getMessage()]
    assert warnings and str(cut) in warnings[0] and "LocalFileOpener" not in warnings[0]
