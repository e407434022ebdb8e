"""Shared fixtures: endpoint settings, WeChat timing scale, and the daemon emulator factory.

Integration tests run the plugin as Dify does (``python -m main`` in serverless mode) under
``tests.emulator.DaemonEmulator``; see ``tests/emulator/__init__.py``. Nothing here imports
``dify_plugin`` (run pytest with ``-p no:anyio``; see reference ``dify-plugin-runtime.md`` §7).
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from tests.emulator import DEFAULT_APP_ID, DaemonEmulator, ScriptedApp

_ALNUM = string.ascii_letters + string.digits


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: runs plugin processes under the daemon emulator (loopback HTTP, seconds)",
    )


def make_aes_key() -> str:
    """A valid 43-character EncodingAESKey ([A-Za-z0-9])."""
    return "".join(secrets.choice(_ALNUM) for _ in range(43))


@pytest.fixture
def time_scale() -> float:
    """Factor for every WeChat deadline in tests (env ``WECHAT_TEST_TIME_SCALE``, default 0.3).

    Passed to the plugin as ``WECHAT_PLUGIN_TIME_SCALE`` and to ``WeChatSimulator``.
    """
    return float(os.environ.get("WECHAT_TEST_TIME_SCALE", "0.3") or 0.3)


@pytest.fixture
def aes_key() -> str:
    return make_aes_key()


@pytest.fixture
def default_settings(aes_key: str) -> dict[str, Any]:
    """Endpoint settings as Dify passes them (decrypted), fresh secrets per test."""
    return {
        "app": {"app_id": DEFAULT_APP_ID, "inputs": {}, "files": []},
        "wechat_token": "tok" + secrets.token_hex(8),
        "app_id": "wx" + secrets.token_hex(8),
        "encoding_aes_key": aes_key,
    }


EmulatorFactory = Callable[..., DaemonEmulator]


@pytest.fixture
def emulator_factory(
    default_settings: dict[str, Any], time_scale: float
) -> Iterator[EmulatorFactory]:
    """``make(app=None, settings=None, processes=1, env=None, **kwargs) -> DaemonEmulator``.

    Returns a *started* emulator (default app: ``ScriptedApp.echo()``, default settings:
    :func:`default_settings`, env gets ``WECHAT_PLUGIN_TIME_SCALE=<time_scale>``); every
    emulator made is stopped at teardown.
    """
    created: list[DaemonEmulator] = []

    def make(
        app: ScriptedApp | None = None,
        settings: Mapping[str, Any] | None = None,
        processes: int = 1,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> DaemonEmulator:
        full_env = {"WECHAT_PLUGIN_TIME_SCALE": str(time_scale), **(env or {})}
        emulator = DaemonEmulator(
            default_settings if settings is None else settings,
            app if app is not None else ScriptedApp.echo(),
            processes=processes,
            env=full_env,
            **kwargs,
        )
        created.append(emulator)
        emulator.start()
        return emulator

    yield make
    for emulator in reversed(created):
        emulator.stop()
