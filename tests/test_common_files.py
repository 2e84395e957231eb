"""common/files.py: a file or folder is replaced whole or not at all, and everything written gets the
mode the umask asks for (not the 0600/0700 of temporary files and safetensors). Run:
``.venv/bin/python -m pytest tests/test_common_files.py -q``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.files import atomic_write_text, built_aside, replace_dir, sha256_file, temp_dir_beside, umask


def test_a_folder_is_replaced_whole_and_a_failed_move_keeps_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "best"
    first = temp_dir_beside(final)
    (first / "model.safetensors").write_text("v1")
    replace_dir(first, final)
    assert (final / "model.safetensors").read_text() == "v1"
    assert oct(final.stat().st_mode & 0o777) == oct(0o777 & ~umask())  # not mkdtemp's 0700
    second = temp_dir_beside(final)
    (second / "model.safetensors").write_text("v2")
    real = os.rename

    def fail_second(src, dst):  # the old folder is set aside, then the new one fails to move in
        if str(src) == str(second):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", fail_second)
    with pytest.raises(OSError, match="disk gone"):
        replace_dir(second, final)
    monkeypatch.undo()
    assert (final / "model.safetensors").read_text() == "v1"  # the old one is back, untouched
    replace_dir(second, final)
    assert (final / "model.safetensors").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # nothing set aside is left


def test_a_folder_built_aside_replaces_the_old_one_only_when_the_block_ends(tmp_path):
    final = tmp_path / "index"
    final.mkdir()
    (final / "index.json").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with built_aside(final) as tmp:
            (tmp / "index.json").write_text("new")
            raise RuntimeError("half way")
    assert (final / "index.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # the half-built folder is gone
    with built_aside(final) as tmp:
        (tmp / "index.json").write_text("new")
        assert (final / "index.json").read_text() == "old"  # readers see the old folder until the end
    assert (final / "index.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_sha256_of_a_file_read_in_pieces_is_hashlibs_of_its_bytes(tmp_path):
    import hashlib

    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "w.bin").write_bytes(data)
    assert sha256_file(tmp_path / "w.bin", chunk=1024) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_atomic_text_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "latest"
    atomic_write_text(path, "step_1\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        atomic_write_text(path, "step_2\n")
    assert path.read_text() == "step_1\n" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def _modes(root: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_models_checkpoints_and_pointers_get_the_umask_modes(tmp_path, mask):
    """A model folder, a training checkpoint (state.safetensors, state.json, the exported model) and
    the ``latest`` pointer: files 0666 & ~umask, folders 0777 & ~umask, as ``open``/``mkdir`` give."""
    from model.clip_vip import CLIPViP, get_config
    from model.convert import save_checkpoint
    from train import checkpoint as ckpt

    model = CLIPViP(get_config("debug"))
    old = os.umask(mask)
    try:
        assert umask() == mask
        save_checkpoint(model, tmp_path / "model")
        ckpt.save(tmp_path / "run" / "checkpoints", 4, {"model": model.state_dict(), "step": 4},
                  model_for_export=model)
    finally:
        os.umask(old)
    modes = {**_modes(tmp_path / "model"), **_modes(tmp_path / "run")}
    step = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert {tmp_path / "model" / "model.safetensors", step / "state.safetensors", step / "model" / "model.safetensors",
            tmp_path / "run" / "checkpoints" / "latest"} <= set(modes)
    for path, mode in modes.items():
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))
