"""The CT-CLIP model zoo: one faithful CT-CLIP v2 whose every part is a switch.

    from models import Variant, SIZES, build
    model = build(Variant.faithful(), "tiny")
"""

from models.build import AXIS_REGISTRIES, build, example_batch, make_current, supports
from models.ctclip import CTCLIP, CTCLIPOutput
from models.variant import AXES, SIZES, Size, Variant, get_size, parse_axis_value

__all__ = [
    "AXES", "AXIS_REGISTRIES", "CTCLIP", "CTCLIPOutput", "SIZES", "Size", "Variant", "build", "example_batch",
    "get_size", "make_current", "parse_axis_value", "supports",
]
