import pytest

import foldconv


def test_set_tf32_returns_the_previous_setting_and_checks_its_argument():
    assert foldconv.get_tf32() is False
    assert foldconv.set_tf32(True) is False
    try:
        assert foldconv.get_tf32() is True
    finally:
        assert foldconv.set_tf32(False) is True
    with pytest.raises(TypeError, match="enabled: expected a bool"):
        foldconv.set_tf32(1)
