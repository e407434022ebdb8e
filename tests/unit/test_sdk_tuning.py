import httpx
import httpx._transports.default as transport
import pytest

from endpoints.wechat.sdk_tuning import share_default_tls_context


def test_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "create_ssl_context", transport.create_ssl_context)
    assert share_default_tls_context()
    assert share_default_tls_context()  # idempotent
    with httpx.Client() as a, httpx.Client() as b:
        assert a._transport._pool._ssl_context is b._transport._pool._ssl_context  # type: ignore[attr-defined]
    with httpx.Client(verify=False) as insecure, httpx.Client() as secure:
        assert insecure._transport._pool._ssl_context is not secure._transport._pool._ssl_context  # type: ignore[attr-defined]
