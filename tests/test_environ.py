import os

import pytest

from tuner import environ


@pytest.mark.parametrize("override", [True, False])
def test_variables_are_set_for_a_while_then_put_back(monkeypatch: pytest.MonkeyPatch, override: bool) -> None:
    monkeypatch.setenv("TUNER_TEST_SET", "mine")
    monkeypatch.delenv("TUNER_TEST_UNSET", raising=False)
    with environ.setting({"TUNER_TEST_SET": "theirs", "TUNER_TEST_UNSET": "new"}, override=override):
        assert os.environ["TUNER_TEST_SET"] == ("theirs" if override else "mine")
        assert os.environ["TUNER_TEST_UNSET"] == "new"
    assert os.environ["TUNER_TEST_SET"] == "mine"
    assert "TUNER_TEST_UNSET" not in os.environ


def test_put_back_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError), environ.setting({"TUNER_TEST_UNSET": "new"}):
        raise RuntimeError
    assert "TUNER_TEST_UNSET" not in os.environ
