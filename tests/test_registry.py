import pytest

from endebias.registry import Registry


def test_register_lookup_and_errors_name_the_entry():
    things = Registry[int]("thing")
    things.register("b")(2)
    things.register("a")(1)
    assert things.names() == ["a", "b"]
    assert things.get("b") == 2
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        things.register("a")(3)
    assert things.get("a") == 1
    with pytest.raises(ValueError, match="unknown thing 'c'; known: a, b"):
        things.get("c")
