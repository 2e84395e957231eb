"""Config loading: files, overrides and the errors a user sees for typos."""

from __future__ import annotations

import dataclasses

import pytest

from common.jsonio import config_json
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
    (tmp_path / "config.json").write_text(config_json(cfg))
    back = config.load(Outer, tmp_path / "config.json")
    assert back == cfg


# ---- values parsed by the field's declared type -------------------------------------------------

@dataclasses.dataclass(kw_only=True, frozen=True)
class Typed:
    steps: int = 0
    lr: float = 1e-3
    on: bool = False
    name: str = "run"
    terms: tuple[str, ...] = ("a",)
    pair: tuple[float, float] = (0.9, 0.98)
    ids: list[int] = dataclasses.field(default_factory=list)
    scale: float | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_override_text_is_parsed_by_the_declared_type():
    cfg = config.load(Typed, None, ["lr=5e-6", "steps=1_000", "on=yes", "name=007", "terms=x,y", "pair=[0.5, 1]",
                                    "ids=[3, 4]", "scale=null", "kwargs={beam: 5}", "inner.rate=1e-2"])
    assert cfg.lr == 5e-06 and type(cfg.lr) is float
    assert cfg.steps == 1000 and cfg.on is True and cfg.name == "007"
    assert cfg.terms == ("x", "y") and cfg.pair == (0.5, 1.0) and cfg.ids == [3, 4]
    assert cfg.scale is None and cfg.kwargs == {"beam": 5} and cfg.inner.rate == 0.01
    assert config.load(Typed, None, ["scale=2", "name='a b'", "terms="]) == Typed(scale=2.0, name="a b", terms=())


def test_yaml_file_values_are_parsed_by_type_too(tmp_path):
    # YAML reads 5e-6 (no dot) as the string "5e-6"; the field is a float, so it becomes one.
    (tmp_path / "c.yaml").write_text("lr: 5e-6\nname: 2024\nscale: 1e-3\n")
    cfg = config.load(Typed, tmp_path / "c.yaml")
    assert cfg.lr == 5e-06 and cfg.name == "2024" and cfg.scale == 1e-3


def test_paper_lr_override_reaches_the_trainer_as_a_float():
    from train import configs as train_configs
    from train.loop import TrainConfig

    cfg = config.load(TrainConfig, None, ["optim.lr=5e-6", "optim.betas=[0.9, 0.99]", "loss_terms=vsc,fc"],
                      base=train_configs.get("debug"))
    assert cfg.optim.lr == 5e-06 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.99) and cfg.loss_terms == ("vsc", "fc")


@pytest.mark.parametrize("override, words", [
    ("lr=abc", ["lr", "'abc'", "number"]),
    ("steps=ten", ["steps", "'ten'", "integer"]),
    ("steps=2.5", ["steps", "'2.5'", "integer"]),
    ("on=maybe", ["on", "'maybe'", "true or false"]),
    ("pair=[1]", ["pair", "'[1]'", "2 items"]),
    ("ids=[1, x]", ["ids[1]", "'x'", "integer"]),
    ("scale=big", ["scale", "'big'", "number"]),
    ("inner=3", ["inner", "section", "inner.<field>"]),
])
def test_a_mistyped_value_names_key_value_and_expected_type(override, words):
    with pytest.raises(config.ConfigError) as err:
        config.load(Typed, None, [override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_a_mistyped_value_in_a_file_names_the_key(tmp_path):
    (tmp_path / "c.toml").write_text('steps = "ten"\n[inner]\nsize = 1.5\n')
    with pytest.raises(config.ConfigError, match=r"steps: 'ten' is not an integer"):
        config.load(Typed, tmp_path / "c.toml")


def test_real_configs_refuse_mistyped_overrides():
    from train import configs as train_configs
    from train.loop import TrainConfig
    from pipeline.run import CurateConfig

    with pytest.raises(config.ConfigError, match=r"optim\.lr: 'abc' is not a number"):
        config.load(TrainConfig, None, ["optim.lr=abc"], base=train_configs.get("debug"))
    with pytest.raises(config.ConfigError, match=r"writer\.samples_per_shard: 'abc' is not an integer"):
        config.load(CurateConfig, None, ["writer.samples_per_shard=abc"])
    # The example is the key's own value, not one borrowed from another key (the learning rate).
    with pytest.raises(config.ConfigError) as err:
        config.load(CurateConfig, None, ["caption.num_gpus=yes"])
    assert str(err.value) == "config key caption.num_gpus: 'yes' is not a number (e.g. 0.0, its value now)"
    with pytest.raises(config.ConfigError, match=r"optim\.lr: 'abc' is not a number \(e\.g\. 5e-06, its value now\)"):
        config.load(TrainConfig, None, ["optim.lr=abc"], base=train_configs.get("pretrain_b32"))


@pytest.mark.parametrize("override, guess", [
    ("inner.sise=4", "inner.size"),
    ("nmae=x", "name"),
    ("rate=1", "inner.rate"),  # the right field, in another section
])
def test_a_typo_suggests_the_closest_key(override, guess):
    with pytest.raises(config.ConfigError, match=f"did you mean '{guess}'"):
        config.load(Typed, None, [override])


def test_broken_file_and_bad_override_syntax_are_config_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("a: [1, 2\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(Typed, tmp_path / "c.yaml")
    with pytest.raises(config.ConfigError, match="section.field=value"):
        config.load(Typed, None, ["steps"])
