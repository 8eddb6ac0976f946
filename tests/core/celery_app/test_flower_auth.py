"""Flower's authentication from settings: basic auth, or anonymous only in dev mode."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from project.core.celery_app.flower import (
    UNAUTHENTICATED_API_ENV,
    apply_flower_auth,
    parse_basic_auth,
)
from project.core.errors import ConfigurationError
from project.core.settings import Settings

pytestmark = pytest.mark.timeout(30)


def _options(basic_auth: list[str] | None = None, auth: str = "") -> SimpleNamespace:
    return SimpleNamespace(basic_auth=basic_auth, auth=auth)


def test_settings_become_flowers_basic_auth() -> None:
    options, environ = _options(), dict[str, str]()
    settings = Settings(flower_basic_auth="admin:s3cret, ops:other")
    assert apply_flower_auth(options, settings, environ) == "basic"
    assert options.basic_auth == ["admin:s3cret", "ops:other"]
    assert UNAUTHENTICATED_API_ENV not in environ


def test_flowers_own_credentials_are_kept() -> None:
    options = _options(basic_auth=["env:user"])
    settings = Settings(flower_basic_auth="admin:s3cret")
    assert apply_flower_auth(options, settings, {}) == "basic"
    assert options.basic_auth == ["env:user", "admin:s3cret"]
    assert apply_flower_auth(_options(basic_auth=["env:user"]), Settings(), {}) == "basic"


def test_oauth_counts_as_authentication() -> None:
    assert apply_flower_auth(_options(auth=".*@example.com"), Settings(), {}) == "oauth"


def test_no_auth_is_refused_outside_dev_mode() -> None:
    environ: dict[str, str] = {}
    with pytest.raises(ConfigurationError, match="AGENTS_FLOWER_BASIC_AUTH"):
        apply_flower_auth(_options(), Settings(dev_mode=False), environ)
    assert UNAUTHENTICATED_API_ENV not in environ


def test_dev_mode_opens_flower_to_anonymous_callers() -> None:
    options, environ = _options(), dict[str, str]()
    assert apply_flower_auth(options, Settings(dev_mode=True), environ).startswith("anonymous")
    assert environ[UNAUTHENTICATED_API_ENV] == "true"
    assert not options.basic_auth


@pytest.mark.parametrize("spec", ["admin", "admin:", ":pw", "a:b,nocolon"])
def test_malformed_credentials_are_refused(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="user:password"):
        parse_basic_auth(spec)
    with pytest.raises(ConfigurationError):
        apply_flower_auth(
            _options(),
            Settings(flower_basic_auth=spec, dev_mode=True),
            {},
        )
