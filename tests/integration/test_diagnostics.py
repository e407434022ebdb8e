"""The status page's diagnostics under the daemon emulator: pushes refused by the (fake)
WeChat API with 48001 and 40164 show up explained, with the counters, only with the key,
and no secret is on any page."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import EmulatorFactory
from tests.emulator import ScriptedApp, WeChatSimulator
from tests.fake_wechat_api import CUSTOM_SEND, FakeWeChatAPI

pytestmark = pytest.mark.integration

PUSH_WAIT = "问题有点复杂，我还在思考，想好了会马上发给你。"
OPENID = "oDiag0123456789abcdefghijklm"


@pytest.fixture
def wechat_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI() as api:
        yield api


def key_for(token: str) -> str:
    """Computed the way the settings help tells the operator to."""
    material = b"wechat-dify-bridge/diagnostics/v1:" + token.encode()
    return hashlib.sha256(material).hexdigest()[:16]


def test_refused_pushes_are_explained_with_the_key_only(
    emulator_factory: EmulatorFactory,
    default_settings: dict[str, Any],
    wechat_api: FakeWeChatAPI,
    time_scale: float,
) -> None:
    settings = dict(
        default_settings,
        delivery_mode="push",  # keeps trying after a 48001, so the 40164 is seen too
        app_id=wechat_api.app_id,
        app_secret=wechat_api.app_secret,
        wechat_api_base_url=wechat_api.base_url,
    )
    emu = emulator_factory(app=ScriptedApp.echo(latency=16 * time_scale), settings=settings)
    sim = WeChatSimulator(
        emu.url("/wechat"),
        settings["wechat_token"],
        settings["app_id"],
        settings["encoding_aes_key"],
        mode="safe",
        time_scale=time_scale,
    )

    def say(text: str) -> list[Any]:
        wechat_api.user_interacted(OPENID)
        return sim.deliver(sim.text(OPENID, text)).user_saw

    wechat_api.fail(48001, times=1, path=CUSTOM_SEND)
    assert say("first") == [PUSH_WAIT]
    assert emu.wait_idle(timeout=30)
    wechat_api.fail(40164, times=1, path=CUSTOM_SEND)  # "invalid ip 203.0.113.7 ipv6 …"
    assert say("second") == [PUSH_WAIT]
    assert emu.wait_idle(timeout=30)
    assert wechat_api.texts(OPENID) == []  # both pushes were refused
    fetched = say("1")
    assert len(fetched) == 1 and str(fetched[0]).startswith("echo: first")
    assert emu.wait_idle(timeout=30)

    plain = requests.get(emu.url("/wechat"), timeout=10)
    wrong = requests.get(emu.url("/wechat"), params={"key": "0" * 16}, timeout=10)
    keyed = requests.get(
        emu.url("/wechat"), params={"key": key_for(settings["wechat_token"])}, timeout=10
    )
    assert plain.status_code == wrong.status_code == keyed.status_code == 200
    assert wrong.text == plain.text
    assert "Diagnostics" not in plain.text and "48001" not in plain.text

    section = keyed.text.split("Diagnostics / 诊断", 1)[1]
    assert "48001" in section and "may not send customer-service messages" in section
    assert "40164" in section and "203.0.113.7" in section
    assert "IP白名单" in section
    [today] = [row for row in section.split("<tr>") if row.startswith("<td>20")][:1]
    cells = [c.split("</td>")[0] for c in today.split("<td>")[1:]]
    # Day, passive, pushed, fetched, expired, handed_off, app_error.
    assert cells[1:] == ["0", "0", "1", "0", "2", "0"], today

    secrets = (
        settings["wechat_token"],
        settings["encoding_aes_key"],
        settings["app_secret"],
        OPENID,
    )
    token = wechat_api.current_token
    for body in (plain.text, wrong.text, keyed.text):
        for secret in (*secrets, *([token] if token else [])):
            assert secret not in body
    assert emu.late_calls == [] and emu.errors == []
