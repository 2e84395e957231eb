"""Config loading: files, overrides and the errors a user sees for typos."""

from __future__ import annotations

import dataclasses

import pytest

from jobs import config


@dataclasses.dataclass(kw_only=True, frozen=True)
class Inner:
    size: int = 3
    names: tuple[str, ...] = ("a",)
    rate: float = 0.5


@dataclasses.dataclass(kw_only=True, frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    path: str | None = None


def test_toml_yaml_and_overrides_agree(tmp_path):
    (tmp_path / "c.toml").write_text('name = "run"\n[inner]\nsize = 7\nnames = ["p", "q"]\n')
    (tmp_path / "c.yaml").write_text("name: run\ninner:\n  size: 7\n  names: [p, q]\n")
    a = config.load(Outer, tmp_path / "c.toml")
    b = config.load(Outer, tmp_path / "c.yaml")
    assert a == b == Outer(name="run", inner=Inner(size=7, names=("p", "q")))
    c = config.load(Outer, tmp_path / "c.toml", ["inner.rate=2", "path=/data"])
    assert c.inner.rate == 2.0 and isinstance(c.inner.rate, float)
    assert c.inner.size == 7 and c.path == "/data"


def test_unknown_key_names_key_and_section(tmp_path):
    with pytest.raises(ValueError, match=r"sise.*inner"):
        config.load(Outer, None, ["inner.sise=4"])


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        config.load(Outer, tmp_path / "nope.toml")


def test_resolved_config_round_trips(tmp_path):
    cfg = Outer(name="r", inner=Inner(size=9))
    config.write_resolved(cfg, tmp_path / "config.json")
    back = config.load(Outer, tmp_path / "config.json")
    assert back == cfg
