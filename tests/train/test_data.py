"""train/data.py: the resumable WebDataset stream over pretraining shards.

Covers batch contents, the rank/worker split and per-epoch seeded shard order, the shards >=
readers check, mid-epoch resume (identical batches) and skipping of corrupt samples and truncated
shards. Run: .venv/bin/python -m pytest tests/train/test_data.py -q
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from shards.format import MEMBERS, expand_pattern, read_sizes
from train.data import LoaderState, ShardDataConfig, ShardLoader, ShardStream, shards_for_worker


def small_cfg(shards: str, **kw) -> ShardDataConfig:
    base = dict(shards=shards, batch_size=3, num_workers=0, num_frames=4, image_size=32, max_text_len=16,
                shuffle_buffer=4, seed=5)
    base.update(kw)
    return ShardDataConfig(**base)


def test_batches_hold_video_frame_and_tokenised_texts(synth_shards, synth_tokenizer):
    batch = next(iter(ShardLoader(small_cfg(synth_shards), synth_tokenizer)))
    assert batch["video"].shape == (3, 4, 3, 32, 32)
    assert batch["frames"].shape == (3, 3, 32, 32)
    assert batch["subtitle_ids"].shape == batch["caption_mask"].shape == (3, 16)
    eot = synth_tokenizer.eos_token_id
    assert (batch["caption_ids"] == eot).any(dim=1).all()
    assert len(set(batch["keys"])) == 3


def test_rank_and_worker_split_is_disjoint_and_epoch_order_is_seeded(synth_shards):
    urls = expand_pattern(synth_shards)
    assert len(urls) == 6 and read_sizes(urls)[Path(urls[0]).name] == 4
    parts = [shards_for_worker(urls, seed=1, epoch=0, worker=g, num_workers=3) for g in range(3)]
    assert sorted(itertools.chain(*parts)) == sorted(urls)
    again = [shards_for_worker(urls, seed=1, epoch=0, worker=g, num_workers=3) for g in range(3)]
    assert parts == again
    orders = {tuple(shards_for_worker(urls, seed=1, epoch=e, worker=0, num_workers=1)) for e in range(6)}
    assert len(orders) > 1


def test_too_few_shards_for_the_readers_is_an_error(synth_shards, synth_tokenizer):
    with pytest.raises(ValueError, match="every reader needs its own shard"):
        ShardStream(small_cfg(synth_shards, num_workers=4), synth_tokenizer, rank=0, world_size=2)


def _take(loader: ShardLoader, n: int) -> list[dict]:
    return [next(loader) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_batches(synth_shards, synth_tokenizer, workers):
    # 24 samples / batch 3 = 8 batches per epoch; stop at 5 (mid-epoch, mid-worker-cycle) and run into epoch 2.
    cfg = small_cfg(synth_shards, num_workers=workers)
    full = _take(ShardLoader(cfg, synth_tokenizer), 11)
    first = ShardLoader(cfg, synth_tokenizer)
    _take(first, 5)
    state = LoaderState.from_dict(first.state.to_dict())
    resumed = _take(ShardLoader(cfg, synth_tokenizer, state=state), 6)
    for a, b in zip(full[5:], resumed):
        assert a["keys"] == b["keys"]
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)
        assert torch.equal(a["subtitle_ids"], b["subtitle_ids"])
    # An epoch covers every sample once, and the next epoch reorders them.
    keys = [k for b in full[:8] for k in b["keys"]]
    assert len(set(keys)) == 24
    assert [k for b in full[8:11] for k in b["keys"]] != keys[:9]


def _corrupt_copy(src_pattern: str, dst: Path) -> str:
    """Copy the shards; garble one sample's mp4 in shard 0 and truncate shard 1 mid-way."""
    dst.mkdir()
    urls = expand_pattern(src_pattern)
    for u in urls:
        shutil.copy(u, dst / Path(u).name)
    s0 = dst / Path(urls[0]).name
    members = []
    with tarfile.open(s0) as tf:
        for m in tf.getmembers():
            members.append((m, tf.extractfile(m).read()))
    with tarfile.open(s0, "w") as tf:
        for i, (m, data) in enumerate(members):
            if m.name.endswith(".mp4") and i < len(MEMBERS):  # the first sample's clip only
                data = b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 4000
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    s1 = dst / Path(urls[1]).name
    blob = s1.read_bytes()
    s1.write_bytes(blob[: len(blob) // 2 + 77])
    return str(dst / Path(src_pattern).name)


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(synth_shards, synth_tokenizer, tmp_path):
    pattern = _corrupt_copy(synth_shards, tmp_path / "bad")
    urls = expand_pattern(synth_shards)
    with tarfile.open(urls[0]) as tf:
        garbled = tf.getnames()[0].split(".")[0]  # each sample's members start with its mp4 (MEMBERS)
    intact = set()
    for u in urls[2:]:
        with tarfile.open(u) as tf:
            intact |= {n.split(".")[0] for n in tf.getnames()}
    loader = ShardLoader(small_cfg(pattern, batch_size=1, shuffle_buffer=0), synth_tokenizer)
    keys, state = [], loader.state
    while True:
        batch = next(loader)
        if loader.state.positions[0].epoch > 0:
            break
        keys, state = keys + batch["keys"], loader.state
    assert state.bad_shards == 1
    assert 1 <= state.skipped_samples <= 2  # the garbled clip, maybe the cut-off shard's partial last sample
    assert garbled not in keys and intact <= set(keys)
    assert len(keys) == len(set(keys)) and 19 <= len(keys) <= 22  # shard 1 lost 1..4 samples


def test_resize_on_device_ships_uint8_clips(synth_shards, synth_tokenizer):
    cfg = small_cfg(synth_shards, resize_on_device=True)
    batch = next(iter(ShardLoader(cfg, synth_tokenizer)))
    assert isinstance(batch["video"], list) and batch["video"][0].dtype == torch.uint8
    assert batch["video"][0].shape[0] == 4 and batch["video"][0].shape[-1] == 3
    ref = next(iter(ShardLoader(dataclasses.replace(cfg, resize_on_device=False), synth_tokenizer)))
    from train.video import preprocess_on_device

    torch.testing.assert_close(preprocess_on_device(batch["video"], 32, "cpu"), ref["video"])
