"""Settings from the environment, and the README that documents them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsfwd.settings import Settings

README = Path(__file__).parent.parent / "README.md"


def test_settings_come_from_nsfwd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFWD_API_KEYS", " alpha-0123456789ab, beta-0123456789abc ,,")
    monkeypatch.setenv("NSFWD_MAX_IMAGE_SIDE", "1024")
    monkeypatch.setenv("NSFWD_MODEL", "/models/nsfw")
    settings = Settings()
    assert settings.api_keys == ["alpha-0123456789ab", "beta-0123456789abc"]
    assert settings.model == "/models/nsfw"
    assert settings.image_limits.max_side == 1024
    assert settings.image_limits.max_pixels == 1024 * 1024


@pytest.mark.parametrize(
    ("variable", "value"),
    [("NSFWD_MAX_QUEUE", "0"), ("NSFWD_DECODE_WORKERS", "-1"), ("NSFWD_PORT", "70000")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable.removeprefix("NSFWD_").lower()):
        Settings()


def test_every_count_and_duration_has_bounds() -> None:
    """A setting without bounds lets a bad value through to fail later, with a traceback."""
    numbers = (int, float, int | None, float | None)
    unbounded = [
        name
        for name, field in Settings.model_fields.items()
        if field.annotation in numbers and not field.metadata
    ]
    assert unbounded == []


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [
        f"NSFWD_{name.upper()}" for name in Settings.model_fields
        if f"NSFWD_{name.upper()}" not in text
    ]  # fmt: skip
    assert not missing, f"README.md does not document {missing}"
