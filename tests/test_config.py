"""Config: YAML + --set overrides, typed coercion, and one-line errors that name the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrsink.config import Config, config_to_yaml, load_config
from ctrsink.errors import CtrSinkError


def test_defaults_validate_and_roundtrip(tmp_path: Path) -> None:
    cfg = Config().validate()
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


def test_set_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nlr: 0.001\n")
    cfg = load_config(
        path, ["epochs=3", "use_sink=true", "sink_signal=time_gap", "head_lr=1e-4", "prompts.pos=Liked: "]
    )
    assert cfg.epochs == 3 and cfg.use_sink is True and cfg.sink_signal == "time_gap"
    assert cfg.head_lr == pytest.approx(1e-4) and cfg.lr == pytest.approx(1e-3)
    assert cfg.prompts == {"pos": "Liked: "}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["epoch=3"], "epoch"),  # unknown key, with a suggestion
        (["epochs=three"], "epochs"),
        (["use_sink=maybe"], "use_sink"),
        (["sink_signal=time"], "sink_signal"),
        (["batch_size=0"], "batch_size"),
        (["two_stage=true"], "two_stage"),
        (["use_sink=true", "inter_sink=true", "split_layer=false"], "inter_sink"),
        (["use_sink=true", "inter_sink=true", "use_cls_token=true"], "inter_sink"),
        (["sink_signal=index"], "sink_signal"),
        (["prompts.target=x"], "prompts"),
        (["noequals"], "key=value"),
    ],
)
def test_bad_options_name_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(CtrSinkError) as err:
        load_config(None, overrides)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(CtrSinkError, match="did you mean 'epochs'"):
        load_config(None, ["epoch=3"])


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(CtrSinkError, match="c.yaml"):
        load_config(path)
    with pytest.raises(CtrSinkError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_stage_schedule() -> None:
    cfg = load_config(None, ["use_sink=true", "two_stage=true", "stage1_epochs=2", "stage2_epochs=1"])
    assert cfg.total_epochs == 3
    assert [cfg.stage_of_epoch(e) for e in range(3)] == ["sink_only", "sink_only", "all_tokens"]
