"""The manifest and settings form follow the daemon's rules and the issue's contract
(reference/dify-plugin-runtime.md §3). The SDK's own loading is exercised by every
integration test, which starts the plugin with ``python -m main``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))


def test_manifest_follows_the_daemon_rules() -> None:
    manifest = load("manifest.yaml")
    assert re.fullmatch(r"[a-z0-9_-]{1,64}", manifest["author"])
    assert re.fullmatch(r"[a-z0-9_-]{1,128}", manifest["name"])
    assert re.fullmatch(r"\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?", manifest["version"])
    assert (ROOT / "_assets" / manifest["icon"]).is_file()
    assert manifest["meta"]["runner"] == {
        "language": "python",
        "version": "3.12",
        "entrypoint": "main",
    }
    assert manifest["meta"]["minimum_dify_version"]
    permission = manifest["resource"]["permission"]
    assert set(permission) == {"endpoint", "app", "storage", "model"}  # only what is used
    assert permission["model"] == {"enabled": True, "speech2text": True, "tts": True}
    assert 1024 <= permission["storage"]["size"] <= 100 * 1024 * 1024
    assert manifest["plugins"] == {"endpoints": ["group/wechat.yaml"]}
    assert (ROOT / manifest["privacy"]).read_text(encoding="utf-8").strip()


def test_endpoints_contract() -> None:
    group = load("group/wechat.yaml")
    routes = {(load(p)["method"], load(p)["path"]) for p in group["endpoints"]}
    assert routes == {
        ("GET", "/wechat"),
        ("POST", "/wechat"),
        ("POST", "/wechat/worker"),
        ("GET", "/wechat/answer/<token>"),
        ("GET", "/wecom"),
        ("POST", "/wecom"),
    }
    hidden = {load(p)["path"] for p in group["endpoints"] if load(p).get("hidden")}
    assert hidden == {"/wechat/worker"}
    for path in group["endpoints"]:
        source = load(path)["extra"]["python"]["source"]
        assert (ROOT / source).is_file()


def test_settings_contract_and_translations() -> None:
    settings = {s["name"]: s for s in load("group/wechat.yaml")["settings"]}
    contract = {
        "app": ("app-selector", True),
        "wechat_token": ("secret-input", True),
        "app_id": ("text-input", True),
        "encoding_aes_key": ("secret-input", False),
        "app_secret": ("secret-input", False),
        "wechat_api_base_url": ("text-input", False),
        "platform": ("select", False),
        "agent_id": ("text-input", False),
    }
    for name, (kind, required) in contract.items():
        assert settings[name]["type"] == kind, name
        assert bool(settings[name].get("required")) is required, name
    assert settings["wechat_api_base_url"]["default"] == "https://api.weixin.qq.com"
    assert settings["platform"]["default"] == "official_account"
    assert [o["value"] for o in settings["platform"]["options"]] == ["official_account", "wecom"]
    for name, setting in settings.items():
        for field in ("label", "help"):
            assert {"en_US", "zh_Hans"} <= set(setting[field]), f"{name}.{field}"
        if setting["type"] in ("text-input", "secret-input"):
            assert {"en_US", "zh_Hans"} <= set(setting["placeholder"]), name
