from endpoints.wechat.settings import (
    DEFAULT_API_BASE_URL,
    DEFAULT_TEXTS,
    ClickEventMode,
    load_settings,
    normalize_api_base_url,
)

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def good(**overrides: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "app": {"app_id": "app-1", "inputs": {"tone": "friendly"}, "files": []},
        "wechat_token": "token123",
        "app_id": "wx1234567890abcdef",
        "encoding_aes_key": KEY,
        "app_secret": "s" * 32,
    }
    raw.update(overrides)
    return raw


def test_good_settings_have_no_problems() -> None:
    s = load_settings(good())
    assert s.problems == ()
    assert s.dify_app_id == "app-1"
    assert s.dify_app_inputs == {"tone": "friendly"}
    assert s.encrypted_mode_available
    assert s.api_base_url == DEFAULT_API_BASE_URL
    assert s.timestamp_tolerance == 300
    assert s.click_event_mode is ClickEventMode.QUERY
    assert s.fetch_keyword == "1"
    assert s.error_message == DEFAULT_TEXTS["error_message"]


def test_problems_are_reported_without_secret_values() -> None:
    s = load_settings(
        good(
            wechat_token="",
            app_id="abc",
            encoding_aes_key="short-secret-value",
            timestamp_tolerance="five minutes",
            wechat_api_base_url="ftp://x",
            app=None,
        )
    )
    names = {p.setting for p in s.problems}
    assert names == {
        "wechat_token",
        "app_id",
        "encoding_aes_key",
        "timestamp_tolerance",
        "wechat_api_base_url",
        "app",
    }
    assert not s.can_verify
    assert not s.encrypted_mode_available
    assert s.timestamp_tolerance == 300
    assert all("short-secret-value" not in p.message_en + p.message_zh for p in s.problems)


def test_api_base_url_forms() -> None:
    assert normalize_api_base_url("") == DEFAULT_API_BASE_URL
    assert normalize_api_base_url("proxy.example.com") == "https://proxy.example.com"
    assert normalize_api_base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalize_api_base_url("https://h/x?y=1") is None
    assert normalize_api_base_url("ftp://h") is None


def test_texts_and_modes() -> None:
    s = load_settings(good(welcome_message="", error_message="", click_event_mode="ignore"))
    assert s.welcome_message == ""  # explicitly emptied: say nothing
    assert s.error_message == DEFAULT_TEXTS["error_message"]
    assert s.click_event_mode is ClickEventMode.IGNORE
    assert load_settings(good(click_event_mode="weird")).click_event_mode is ClickEventMode.QUERY
    assert load_settings(good(timestamp_tolerance="60")).timestamp_tolerance == 60
    for absurd in ("inf", "1e999", "nan", "-5"):
        assert load_settings(good(timestamp_tolerance=absurd)).timestamp_tolerance == 300


def test_plain_http_api_base_url_is_flagged_unless_local() -> None:
    def problem(url: str) -> bool:
        settings = load_settings(good(wechat_api_base_url=url))
        return any(p.setting == "wechat_api_base_url" for p in settings.problems)

    assert problem("http://proxy.example.com")
    assert not problem("http://127.0.0.1:8080")
    assert not problem("http://10.0.0.5")
    assert not problem("http://localhost:9000")
    assert not problem("https://proxy.example.com")
    s = load_settings(good(wechat_api_base_url="http://proxy.example.com"))
    assert s.api_base_url == "http://proxy.example.com"  # a warning, not a refusal
