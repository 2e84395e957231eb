"""common/files.py: a file or folder is replaced whole or not at all. Run:
``.venv/bin/python -m pytest tests/test_common_files.py -q``."""

from __future__ import annotations

import os

import pytest

from common.files import atomic_write_text, replace_dir, temp_dir_beside


def test_a_folder_is_replaced_whole_and_a_failed_move_keeps_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "best"
    first = temp_dir_beside(final)
    (first / "model.safetensors").write_text("v1")
    replace_dir(first, final)
    assert (final / "model.safetensors").read_text() == "v1"
    assert oct(final.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
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


def test_atomic_text_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "latest"
    atomic_write_text(path, "step_1\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        atomic_write_text(path, "step_2\n")
    assert path.read_text() == "step_1\n" and [p.name for p in tmp_path.iterdir()] == ["latest"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
