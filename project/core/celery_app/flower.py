"""Flower for this deployment: authentication from settings, anonymous only in dev mode.

``celery -A project flower`` imports ``project``, which imports this module. When
Flower builds its web app (it sends Celery's ``import_modules`` signal once its own
options are parsed) :func:`secure_flower` turns ``AGENTS_FLOWER_BASIC_AUTH``
(``user:password``, several separated by commas) into Flower's ``basic_auth``
option. Credentials Flower got itself (``FLOWER_BASIC_AUTH``, ``--basic-auth``) or
OAuth (``--auth``) count too. With none of them Flower refuses to start, unless
``AGENTS_DEV_MODE=true``, which opens the dashboard and the API to anonymous
callers (``FLOWER_UNAUTHENTICATED_API``) for local development.

Flower's address and port come from ``FLOWER_ADDRESS`` and ``FLOWER_PORT``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import click
from celery.signals import import_modules

from project.core.errors import ConfigurationError
from project.core.settings import Settings, get_settings

log = logging.getLogger("project.flower")

UNAUTHENTICATED_API_ENV = "FLOWER_UNAUTHENTICATED_API"


def parse_basic_auth(spec: str) -> list[str]:
    """Split ``user:password[,user:password...]`` into Flower's credential list.

    Raises:
        ConfigurationError: an entry has no user or no password.
    """
    credentials = [part.strip() for part in spec.split(",") if part.strip()]
    for position, credential in enumerate(credentials, start=1):
        user, sep, password = credential.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError(
                f"AGENTS_FLOWER_BASIC_AUTH entry {position} is not 'user:password'"
            )
    return credentials


def apply_flower_auth(options: Any, settings: Settings, environ: MutableMapping[str, str]) -> str:
    """Set Flower's ``basic_auth`` option from settings, or allow anonymous use in dev mode.

    ``options`` is Flower's (tornado) options object, already parsed from Flower's own
    command line, config file and ``FLOWER_*`` variables. Returns how Flower is
    protected: ``basic``, ``oauth`` or ``anonymous (dev mode)``.

    Raises:
        ConfigurationError: no authentication is configured outside dev mode, or the
            configured credentials are malformed.
    """
    configured: list[str] = list(options.basic_auth or [])
    if settings.flower_basic_auth is not None:
        for credential in parse_basic_auth(settings.flower_basic_auth.get_secret_value()):
            if credential not in configured:
                configured.append(credential)
    if configured:
        options.basic_auth = configured
        return "basic"
    if options.auth:
        return "oauth"
    if settings.dev_mode:
        environ[UNAUTHENTICATED_API_ENV] = "true"
        return "anonymous (dev mode)"
    raise ConfigurationError(
        "Flower needs authentication: set AGENTS_FLOWER_BASIC_AUTH=user:password "
        "(or FLOWER_BASIC_AUTH, --basic-auth, or --auth for OAuth); only "
        "AGENTS_DEV_MODE=true allows anonymous access"
    )


def secure_flower(sender: Any = None, **_: Any) -> None:
    """Celery ``import_modules`` receiver: secure Flower when this process is Flower."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "flower":
        return
    from tornado.options import options

    try:
        mode = apply_flower_auth(options, get_settings(), os.environ)
    except ConfigurationError as exc:
        print(f"flower: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    level = logging.WARNING if mode.startswith("anonymous") else logging.INFO
    log.log(level, "flower: access is %s", mode)


import_modules.connect(secure_flower, weak=False)
