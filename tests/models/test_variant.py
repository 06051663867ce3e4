import dataclasses

import pytest

from models import AXES, SIZES, Size, Variant, get_size, parse_axis_value


def test_faithful_is_default_and_first_value_of_every_axis():
    faithful = Variant.faithful()
    assert faithful == Variant()
    for axis, values in AXES.items():
        assert getattr(faithful, axis) == values[0]
    assert faithful.key == "faithful"


@pytest.mark.parametrize("axis", list(AXES))
def test_unknown_value_names_axis_and_lists_valid_values(axis):
    with pytest.raises(ValueError) as err:
        Variant(**{axis: "no-such-value"})
    message = str(err.value)
    assert repr(axis) in message
    for value in AXES[axis]:
        expected = ("on" if value else "off") if isinstance(value, bool) else str(value)
        assert expected in message


def test_bool_axes_reject_integers():
    with pytest.raises(ValueError, match="'vq'"):
        Variant(vq=1)


def test_modern_is_the_seed_all_on_row():
    modern = Variant.modern()
    assert (modern.attention, modern.norm, modern.mlp, modern.loss) == ("sdpa_flash", "rmsnorm", "swiglu", "siglip")
    assert modern.key == "attn=sdpa_flash,pos=none,norm=rmsnorm,mlp=swiglu,loss=siglip"
    assert modern.changed_axes() == {"attention": "sdpa_flash", "position": "none", "norm": "rmsnorm",
                                     "mlp": "swiglu", "loss": "siglip"}


def test_keys_are_unique_across_single_switches():
    keys = {Variant().replace(**{axis: value}).key for axis, values in AXES.items() for value in values}
    assert len(keys) == sum(len(v) for v in AXES.values()) - len(AXES) + 1


def test_parse_axis_value_and_roundtrip():
    assert parse_axis_value("vq", "off") is False
    assert parse_axis_value("checkpointing", "true") is True
    assert parse_axis_value("precision", "bf16") == "bf16"
    with pytest.raises(ValueError, match="valid values: fp32, fp16, bf16"):
        parse_axis_value("precision", "fp8")
    with pytest.raises(ValueError, match="unknown axis 'colour'"):
        parse_axis_value("colour", "red")
    variant = Variant.modern().replace(vq=False)
    assert Variant.from_dict(variant.as_dict()) == variant


def test_paper_size_geometry():
    paper = SIZES["paper"]
    assert paper.grid == (24, 24, 24)
    assert paper.patch_dim == 4000
    assert paper.ff_inner == 1365
    assert paper.dim_image == 294_912
    assert paper.volume_shape == (1, 240, 480, 480)
    assert SIZES["paper16"].batch == 16 and SIZES["paper16"].replace(batch=4, name="paper") == paper


def test_size_is_a_plain_dataclass_and_validates():
    custom = dataclasses.replace(SIZES["tiny"], name="wide", dim=48)
    assert isinstance(custom, Size) and custom.ff_inner == 128
    with pytest.raises(ValueError, match="not divisible"):
        SIZES["tiny"].replace(image_size=41)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        get_size("huge")
