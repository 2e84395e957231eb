"""A shard task's steps on records, without Ray (pipeline/shard_task.py, pipeline/caption_service.py):
decode, the inline caption step in batches of ``caption.batch_size``, order and failures kept.
Run: ``.venv/bin/python -m pytest tests/pipeline/test_shard_task.py -q``."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from caption.protocol import DecodeSettings
from pipeline import caption_service
from pipeline.caption_service import CaptionConfig
from pipeline.manifest import ManifestConfig, scan_local
from pipeline.record import ClipRecord
from pipeline.shard_task import ShardJob, decoded
from pipeline.writer import ShardWriterConfig
from video.frames import FrameConfig

KEEP = ["clip000004", "clip000000", "broken_truncated", "broken_missing", "broken_empty_text", "broken_span"]


@pytest.fixture()
def recs(curate_manifest) -> list[ClipRecord]:
    rows = [r for r in scan_local(ManifestConfig(path=str(curate_manifest))) if r["key"] in KEEP]
    return [ClipRecord.from_row(r) for r in rows]


def _job(**caption) -> ShardJob:
    return ShardJob(manifest=ManifestConfig(), frames=FrameConfig(), caption=CaptionConfig(**caption),
                    writer=ShardWriterConfig(), base_dir="")


def test_decode_fills_ok_records_and_fails_the_rest(recs):
    out = {r.key: r for r in decoded(_job(), recs)}
    assert list(out) == [r.key for r in recs]  # order kept
    assert out["broken_empty_text"].error.startswith("empty text")
    assert "InvalidDataError" in out["broken_truncated"].error
    assert "FileNotFoundError" in out["broken_missing"].error
    assert "outside the video" in out["broken_span"].error
    for key in ("clip000004", "clip000000"):
        rec = out[key]
        assert rec.ok and rec.error == ""
        assert Image.open(io.BytesIO(rec.jpg)).format == "JPEG" and rec.mp4[4:8] == b"ftyp"
        assert rec.clip["start"] <= rec.clip["middle_time"] < rec.clip["end"]
    # The empty-text row was never decoded (failed rows skip the work).
    assert out["broken_empty_text"].decode_s == 0.0 and out["broken_empty_text"].jpg == b""


class _Spy:
    """A captioner that records the size of every generate call and captions by image size."""

    name = "spy"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def generate(self, images):
        self.calls.append(len(images))
        return [f"{im.width}x{im.height}" for im in images]


def test_inline_captions_in_batches_of_caption_batch_size_and_keep_order(recs, monkeypatch):
    spy = _Spy()
    cfg = CaptionConfig(model="py:spy:Spy", batch_size=3)
    monkeypatch.setattr(caption_service, "_INLINE", {})
    monkeypatch.setattr(caption_service, "load", lambda c: (spy, {"model": c.model}))
    many = [ClipRecord(key=f"k{i}", path="", text="t", extra={}, shard=0, row=i) for i in range(8)]
    for i, rec in enumerate(many):
        if i == 2:
            rec.fail("decode failed")
        else:
            buf = io.BytesIO()
            Image.new("RGB", (10 + i, 4)).save(buf, format="JPEG")
            rec.jpg = buf.getvalue()
    out = list(caption_service.inline_captions(iter(many), cfg))
    assert [r.key for r in out] == [f"k{i}" for i in range(8)]
    assert spy.calls == [3, 3, 1]  # 7 ok frames in generate calls of caption.batch_size; failed ones skipped
    assert [r.caption for r in out] == ["10x4", "11x4", "", "13x4", "14x4", "15x4", "16x4", "17x4"]
    assert out[2].status == "failed" and out[2].caption_info is None


def test_inline_captions_with_a_real_model_record_its_identity(recs, tmp_path):
    from demo.tiny_hf import write_debug_model

    model = write_debug_model(tmp_path / "blip")
    cfg = CaptionConfig(model=f"hf:{model}", device="cpu", batch_size=2,
                        decode=DecodeSettings(beam=2, max_new_tokens=6))
    out = list(caption_service.inline_captions(decoded(_job(), recs), cfg))
    ok = [r for r in out if r.ok]
    assert len(ok) == 2 and all(r.caption for r in ok)
    assert all(r.caption == "" for r in out if not r.ok)
    info = ok[0].caption_info
    assert info["model"] == f"hf:{model}" and info["settings"]["beam"] == 2
    assert info["weights_sha256"]["model.safetensors"]


def test_empty_caption_fails_the_row():
    rec = ClipRecord(key="k", path="", text="t", extra={}, shard=0, row=0, jpg=b"x")
    caption_service.set_caption(rec, "", 0.1, {"model": "m"})
    assert rec.status == "failed" and rec.error.startswith("empty caption")


def test_hf_captioner_splits_calls_into_forward_passes_of_batch_size(tmp_path, monkeypatch):
    from caption.registry import load_captioner
    from demo.tiny_hf import write_debug_model

    model = write_debug_model(tmp_path / "blip")
    cap = load_captioner(f"hf:{model}", device="cpu", settings=DecodeSettings(beam=1, max_new_tokens=3),
                         batch_size=2)
    sizes = []
    real = cap._generate
    monkeypatch.setattr(cap, "_generate", lambda ims: sizes.append(len(ims)) or real(ims))
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    assert len(cap.generate(images)) == 5 and sizes == [2, 2, 1]


def test_py_backend_builds_a_users_class_and_names_what_is_missing():
    from caption.registry import load_captioner

    sim = load_captioner("py:bench.sim_gpu:SimulatedGPU", batch_size=4, a=0.0, b=0.0)
    assert sim.generate([Image.new("RGB", (4, 2), (10, 20, 30))]) == ["mean colour 10 20 30 size 4x2"]
    with pytest.raises(ValueError, match="module 'no_such_module' cannot be imported"):
        load_captioner("py:no_such_module:X")
    with pytest.raises(ValueError, match="has no class 'Nope'"):
        load_captioner("py:bench.sim_gpu:Nope")
    with pytest.raises(ValueError, match="py:<module>:<Class>"):
        load_captioner("py:bench.sim_gpu")


class _LostReplica(Exception):
    """Stands in for Ray's RayActorError: the client retries on the exception's class name."""


_LostReplica.__name__ = "RayActorError"


class _Replicas:
    """A handle whose requests are answered when the test says so, and whose replica can "die"."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.answered = 0  # requests answered so far
        self.dead: set[int] = set()  # requests that fail as lost with their replica

    @property
    def caption(self):
        return self

    def remote(self, request):
        _, jpgs = request
        self.sent.append(list(jpgs))
        return _Response(self, len(self.sent) - 1, jpgs)


class _Response:
    def __init__(self, replicas: _Replicas, index: int, jpgs: list[bytes]) -> None:
        self.replicas, self.index, self.jpgs = replicas, index, jpgs

    def result(self, timeout_s=None):
        if self.index in self.replicas.dead:
            self.replicas.dead.discard(self.index)
            raise _LostReplica("the actor died unexpectedly")
        if self.index >= self.replicas.answered:
            if timeout_s == 0.0:
                raise TimeoutError
            self.replicas.answered = self.index + 1  # a blocking wait: the service catches up
        return [(j.decode().upper(), 0.5) for j in self.jpgs]


def _records(n: int, failed: tuple[int, ...] = ()) -> list[ClipRecord]:
    out = []
    for i in range(n):
        rec = ClipRecord(key=f"k{i}", path="", text="t", extra={}, shard=0, row=i, jpg=f"frame {i}".encode())
        if i in failed:
            rec.fail("decode failed")
        out.append(rec)
    return out


def test_service_client_keeps_order_holds_a_bounded_window_and_resends_lost_frames(monkeypatch):
    replicas = _Replicas()
    monkeypatch.setattr(caption_service, "_handle", lambda app, cfg: (replicas, {"model": "m"}))
    cfg = CaptionConfig(model="m", placement="actors", frames_per_request=3, max_in_flight_per_task=7)
    held = []

    def source():
        for rec in _records(20, failed=(4,)):
            held.append(rec.row)
            yield rec

    replicas.dead = {1}  # the replica holding the second request dies
    out = []
    for rec in caption_service.service_captions(source(), cfg, "app"):
        out.append(rec)
        assert len(held) - len(out) <= cfg.max_in_flight_per_task  # never more records held than the window
    assert [r.row for r in out] == list(range(20))
    for r in out:
        assert (r.status, r.caption) == (("failed", "") if r.row == 4 else ("ok", f"FRAME {r.row}"))
    assert all(len(req) <= 3 for req in replicas.sent)
    assert sum(len(req) for req in replicas.sent) == 19 + 3  # the lost request went out twice
    assert replicas.sent[1] in replicas.sent[2:]


def test_service_client_fails_rows_whose_replicas_keep_dying(monkeypatch):
    replicas = _Replicas()
    monkeypatch.setattr(caption_service, "_handle", lambda app, cfg: (replicas, {"model": "m"}))
    cfg = CaptionConfig(model="m", placement="actors", frames_per_request=2, max_attempts=2)

    real_remote = replicas.remote

    def remote(request):  # every send of frames 0 and 1 lands on a replica that dies
        response = real_remote(request)
        if request[1][0] == b"frame 0":
            replicas.dead.add(response.index)
        return response

    replicas.remote = remote
    out = list(caption_service.service_captions(iter(_records(4)), cfg, "app"))
    assert [r.status for r in out] == ["failed", "failed", "ok", "ok"]
    assert "died, 2 times (caption.max_attempts)" in out[0].error
    assert [r.caption for r in out[2:]] == ["FRAME 2", "FRAME 3"]
