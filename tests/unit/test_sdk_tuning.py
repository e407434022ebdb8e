import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx._transports.default as transport
import pytest

from endpoints.wechat import sdk_tuning
from endpoints.wechat.sdk_tuning import share_default_tls_context


def test_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "create_ssl_context", transport.create_ssl_context)
    assert share_default_tls_context()
    assert share_default_tls_context()  # idempotent
    with httpx.Client() as a, httpx.Client() as b:
        assert a._transport._pool._ssl_context is b._transport._pool._ssl_context  # type: ignore[attr-defined]
    with httpx.Client(verify=False) as insecure, httpx.Client() as secure:
        assert insecure._transport._pool._ssl_context is not secure._transport._pool._ssl_context  # type: ignore[attr-defined]


# --- the SDK's backwards invocations --------------------------------------------------------
# Importing dify_plugin monkey-patches the process for gevent, so whatever touches the SDK
# runs in a child process (see SDK_CHILD below); the building blocks are tested here.


def test_the_shelf_lends_each_client_to_one_call_at_a_time() -> None:
    made: list[httpx.Client] = []

    def factory() -> httpx.Client:
        made.append(sdk_tuning._new_client())
        return made[-1]

    shelf = sdk_tuning._ClientShelf(factory)
    with shelf.lend() as a, shelf.lend() as b:  # two calls at once: two clients
        assert a is not b
    assert shelf.idle == 2
    with shelf.lend() as c:
        assert c in (a, b)  # reused, not built again
    assert len(made) == 2
    lent = shelf.lend()
    lent.close()
    lent.close()  # closing twice must not shelve it twice
    assert shelf.idle == 2


def test_the_shelf_drops_closed_clients_and_keeps_a_bounded_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sdk_tuning, "MAX_IDLE_CLIENTS", 1)
    shelf = sdk_tuning._ClientShelf()
    with shelf.lend() as a:
        a.close()
    assert shelf.idle == 0
    first, second = shelf.lend(), shelf.lend()
    with first as x, second as y:
        pass
    assert shelf.idle == 1 and x.is_closed != y.is_closed  # the one over the bound: closed


def test_lent_clients_keep_no_cookies_and_no_connections() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "cookie" not in request.headers
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"})

    client = sdk_tuning._Client(transport=httpx.MockTransport(handler))
    assert client.get("http://daemon/one").status_code == 200
    assert client.get("http://daemon/two").status_code == 200  # no cookie sent back
    assert not client.cookies and dict(client.cookies) == {}
    default = sdk_tuning._new_client()
    assert default._transport._pool._max_keepalive_connections == 0  # type: ignore[attr-defined]


def test_only_argument_free_clients_come_from_the_shelf() -> None:
    stand_in = sdk_tuning._HttpxWithClientShelf(httpx)
    assert stand_in.Timeout is httpx.Timeout  # everything else is httpx itself
    configured = stand_in.Client(timeout=3)
    try:
        assert isinstance(configured, httpx.Client)
    finally:
        configured.close()
    with stand_in.Client() as lent:
        assert isinstance(lent, sdk_tuning._Client)
    assert stand_in.shelf.idle == 1


def test_type_adapters_are_built_once_per_type() -> None:
    adapters = sdk_tuning._CachedTypeAdapters()
    first = adapters(dict[str, Any])
    assert adapters(dict[str, Any]) is first
    assert first.validate_json('{"a": 1}') == {"a": 1}
    assert adapters(list[int]) is not first
    assert adapters(dict[str, Any], config=None) is not first  # options: not cached


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        (b"10.0.0.7", True),
        ("localhost", False),
        ("plugin_daemon", False),
        ("", False),
        (None, False),
        ("1.2.3", False),
    ],
)
def test_ip_literals_are_told_from_host_names(host: Any, literal: bool) -> None:
    assert sdk_tuning._ip_literal(host) is literal


SDK_CHILD = r"""
import json, sys
import dify_plugin  # patches the process for gevent, as main.py does
import gevent
from concurrent.futures import ThreadPoolExecutor
import dify_plugin.core.runtime as runtime
from dify_plugin.config.config import InstallMethod
from dify_plugin.core.runtime import Session
from dify_plugin.core.server.stdio.request_reader import StdioRequestReader
from dify_plugin.core.server.stdio.response_writer import StdioResponseWriter
from endpoints.wechat import sdk_tuning
from tests.emulator import DaemonEmulator, ScriptedApp

applied = sdk_tuning.tune_sdk()
again = sdk_tuning.tune_sdk()
emulator = DaemonEmulator({}, ScriptedApp("chat", lambda r: "x"), processes=0).start()
try:
    session = Session(
        emulator.open_session(), ThreadPoolExecutor(2), StdioRequestReader(),
        StdioResponseWriter(), install_method=InstallMethod.Serverless,
        dify_plugin_daemon_url=emulator.daemon_url,
    )
    storage = session.storage

    def user(n):
        key = f"wx/ep/job/{n}"
        storage.set(key, b"value %d" % n)
        assert storage.exist(key) and storage.get(key) == b"value %d" % n
        storage.delete(key)
        try:
            storage.get(key)
        except Exception:
            return True
        return False

    results = [g.value for g in gevent.joinall([gevent.spawn(user, n) for n in range(20)])]
    print(json.dumps({
        "applied": applied, "again": again, "results": results,
        "calls": len(emulator.storage_calls),
        "idle_clients": runtime.httpx.shelf.idle,
        "adapters": len(runtime.TypeAdapter._adapters),
        "resolver": type(gevent.get_hub().resolver).__name__,
    }))
finally:
    emulator.stop()
"""


def test_the_sdk_runs_its_backwards_calls_through_the_tuning() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SDK_CHILD],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(report["applied"].values()) and report["again"] == report["applied"]
    assert report["results"] == [True] * 20  # set, exist, get, delete, missing get: all right
    assert report["calls"] == 20 * 5  # set, exist, get, delete, get
    assert 1 <= report["idle_clients"] <= 20  # reused: at most one per concurrent call
    assert report["adapters"] == 1  # one TypeAdapter(dict[str, Any]) for every line
    assert report["resolver"] == "_Resolver"


def test_a_tuning_that_fails_unexpectedly_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> bool:
        raise ModuleNotFoundError("dns")  # e.g. GEVENT_RESOLVER=dnspython without dnspython

    # Stand-ins: the real tunings patch this process's SDK (tested in a child process).
    for name in ("share_default_tls_context", "reuse_backwards_clients"):
        monkeypatch.setattr(sdk_tuning, name, lambda: True)
    monkeypatch.setattr(sdk_tuning, "cache_backwards_type_adapter", lambda: True)
    monkeypatch.setattr(sdk_tuning, "resolve_ip_literals_inline", broken)
    applied = sdk_tuning.tune_sdk()
    assert applied["inline IP literals"] is False
    assert applied["cached type adapters"] is True
    assert set(applied) == {
        "shared TLS context",
        "reused backwards clients",
        "cached type adapters",
        "inline IP literals",
    }
