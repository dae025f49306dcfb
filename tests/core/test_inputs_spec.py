import pytest

from effstudio.core.errors import EffstudioError
from effstudio.core.inputs import InputSpec, parse_input_spec, parse_input_specs


def test_parse_shapes_and_dtypes() -> None:
    assert parse_input_spec("images=1x3x640x640") == InputSpec("images", (1, 3, 640, 640), None)
    assert parse_input_spec("input_ids=1x128:int64") == InputSpec("input_ids", (1, 128), "int64")
    assert parse_input_spec("x=4,16") == InputSpec("x", (4, 16), None)
    assert set(parse_input_specs(["a=1", "b=2x2"])) == {"a", "b"}


@pytest.mark.parametrize("bad", ["images", "images=", "=1x3", "x=1xx3", "x=a"])
def test_bad_specs_give_one_clear_error(bad: str) -> None:
    with pytest.raises(EffstudioError, match="NAME=DIMS"):
        parse_input_spec(bad)
