"""The WeCom API client and sender against the loopback fake WeCom server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from endpoints.wechat.api import (
    CredentialError,
    IPNotTrusted,
    UserUnavailable,
    WeComClient,
    wecom_error_for,
)
from endpoints.wechat.api.errors import AccessTokenInvalid, ContentRejected
from endpoints.wechat.parts import markdown_part
from endpoints.wechat.senders import WeComSender, api_client, sender_for
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests.fake_wecom_api import FakeWeComAPI
from tests.fakes import MemoryStorage
from tests.media_samples import png_image


@pytest.fixture
def wecom() -> Iterator[FakeWeComAPI]:
    with FakeWeComAPI(members={"zhangsan", "lisi"}) as fake:
        yield fake


def store() -> EndpointStore:
    return EndpointStore(MemoryStorage(), "ep-1")


def client(
    fake: FakeWeComAPI,
    shared: EndpointStore | None = None,
    *,
    secret: str | None = None,
    agent_id: str | None = None,
) -> WeComClient:
    return WeComClient(
        fake.base_url,
        fake.corp_id,
        secret or fake.corp_secret,
        agent_id or str(fake.agent_id),
        shared or store(),
    )


def settings_for(fake: FakeWeComAPI, **extra: str) -> Settings:
    raw = {
        "platform": "wecom",
        "wechat_token": "tok12345",
        "app_id": fake.corp_id,
        "app_secret": fake.corp_secret,
        "agent_id": str(fake.agent_id),
        "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wechat_api_base_url": fake.base_url,
    }
    raw.update(extra)
    return load_settings(raw)


def test_messages_go_out_as_the_app_with_one_token(wecom: FakeWeComAPI) -> None:
    with client(wecom) as c:
        c.message.send_text("zhangsan", "你好")
        c.message.send_markdown("zhangsan", "**粗体**")
    assert wecom.texts("zhangsan") == ["你好"]
    assert wecom.markdowns("zhangsan") == ["**粗体**"]
    assert wecom.token_fetches == 1
    assert all(b["agentid"] == wecom.agent_id for b in wecom.outbox("zhangsan"))


def test_the_token_is_shared_through_storage_per_corp_and_agent(wecom: FakeWeComAPI) -> None:
    shared = store()
    with client(wecom, shared) as first, client(wecom, shared) as second:
        first.message.send_text("zhangsan", "1")
        second.message.send_text("zhangsan", "2")
    assert wecom.token_fetches == 1
    with client(wecom, shared, agent_id="1000003") as other_app:
        assert other_app.tokens.get() is not None
    assert wecom.token_fetches == 2  # another app's Secret has its own token
    # A changed Secret is not served the old one's token (this one is wrong: WeCom says so).
    corrected = client(wecom, shared, secret="a-corrected-secret-0000")
    with corrected, pytest.raises(CredentialError):
        corrected.tokens.get()


def test_an_expired_token_is_refreshed_once_and_the_call_retried(wecom: FakeWeComAPI) -> None:
    with client(wecom) as c:
        c.message.send_text("zhangsan", "before")
        wecom.expire_token()
        c.message.send_text("zhangsan", "after")
    assert wecom.texts("zhangsan") == ["before", "after"]
    assert wecom.token_fetches == 2


def test_60020_names_the_ip_to_trust(wecom: FakeWeComAPI) -> None:
    wecom.distrust_ip("198.51.100.20")
    with client(wecom) as c, pytest.raises(IPNotTrusted) as caught:
        c.message.send_text("zhangsan", "hi")
    assert caught.value.errcode == 60020
    assert caught.value.ip == "198.51.100.20"
    assert "198.51.100.20" in caught.value.hint and "企业可信IP" in caught.value.hint
    assert "?" not in str(caught.value)  # the "more info" URL lost its query


def test_a_wrong_secret_is_a_credential_error_without_the_secret(wecom: FakeWeComAPI) -> None:
    with client(wecom, secret="wrong-secret-0123456789") as c, pytest.raises(CredentialError) as e:
        c.message.send_text("zhangsan", "hi")
    assert e.value.errcode == 40001 and "Secret" in e.value.hint
    assert "wrong-secret-0123456789" not in str(e.value)


def test_a_wrong_agent_id_is_explained(wecom: FakeWeComAPI) -> None:
    with client(wecom, agent_id="999") as c, pytest.raises(CredentialError) as caught:
        c.message.send_text("zhangsan", "hi")
    assert caught.value.errcode == 40056 and "AgentId" in caught.value.hint


def test_a_member_outside_the_visibility_range_is_unavailable(wecom: FakeWeComAPI) -> None:
    with client(wecom) as c, pytest.raises(UserUnavailable) as caught:
        c.message.send_text("stranger", "hi")
    assert caught.value.errcode == 81013 and "可见范围" in caught.value.hint


def test_markdown_over_2048_bytes_is_refused_before_sending(wecom: FakeWeComAPI) -> None:
    with client(wecom) as c, pytest.raises(ValueError):
        c.message.send_markdown("zhangsan", "长" * 683)
    assert wecom.calls("/cgi-bin/message/send") == []


def test_wecom_codes_mean_wecom_things() -> None:
    assert isinstance(wecom_error_for(40001, "invalid secret"), CredentialError)
    assert isinstance(wecom_error_for(42001, "expired"), AccessTokenInvalid)
    assert isinstance(wecom_error_for(40058, "markdown"), ContentRejected)
    unknown = wecom_error_for(86001, "whatever")
    assert "open.work.weixin.qq.com/devtool/query" in unknown.hint


def test_media_round_trip_through_the_wecom_api(wecom: FakeWeComAPI) -> None:
    picture = png_image(8, 8)
    media_id = wecom.add_media(picture, "image/png")
    with client(wecom) as c:
        assert c.media.download(media_id).content == picture
        uploaded = c.media.upload("image", "a.png", picture, "image/png")
        c.message.send_media("zhangsan", "image", uploaded.media_id)
    assert wecom.received_media("zhangsan") == [("image", picture)]


# --- the sender --------------------------------------------------------------------------


def test_the_sender_sends_markdown_parts_as_markdown_and_text_as_text(
    wecom: FakeWeComAPI,
) -> None:
    settings = settings_for(wecom)
    sender = sender_for(settings, store())
    assert isinstance(sender, WeComSender)
    try:
        sender.send_text("lisi", markdown_part("## 标题\n\n**要点**"))
        sender.send_text("lisi", "纯文本")
        sender.start_typing("lisi")  # WeCom has none: no call
    finally:
        sender.close()
    assert wecom.markdowns("lisi") == ["## 标题\n\n**要点**"]
    assert wecom.texts("lisi") == ["纯文本"]


def test_refused_markdown_falls_back_to_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeWeComAPI(max_markdown_bytes=10) as fake:
        sender = WeComSender(settings_for(fake), store())
        try:
            sender.send_text("lisi", markdown_part("## 标题\n\n**这段内容较长**"))
        finally:
            sender.close()
        assert fake.markdowns("lisi") == []
        assert fake.texts("lisi") == ["【标题】\n\n这段内容较长"]
    assert "40058" in caplog.text


def test_markdown_switched_off_sends_text(wecom: FakeWeComAPI) -> None:
    sender = sender_for(settings_for(wecom, wecom_markdown="false"), store())
    try:
        sender.send_text("lisi", markdown_part("**要点**"))
    finally:
        sender.close()
    assert wecom.texts("lisi") == ["要点"] and wecom.markdowns("lisi") == []


def test_the_client_follows_the_platform(wecom: FakeWeComAPI) -> None:
    with api_client(settings_for(wecom), store()) as c:
        assert isinstance(c, WeComClient)
