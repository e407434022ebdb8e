"""Run the plugin the way Dify does, under test control.

- :mod:`.plugin_process` — the plugin as a serverless ``python -m main`` subprocess.
- :mod:`.daemon` — :class:`DaemonEmulator`: the Dify plugin daemon + Dify API (endpoint front,
  backwards invocations, storage, scripted apps) enforcing the session lifetime rule.
- :mod:`.apps` — :class:`ScriptedApp`: Dify apps of every mode with scripted answers and timing.
- :mod:`.wechat` — :class:`WeChatSimulator`: WeChat's servers (signing, encryption, retries).

Pure stdlib + requests + wechatpy; never imports ``dify_plugin`` (that would gevent-patch the
test process).
"""

from .apps import (
    DEFAULT_APP_ID,
    AppInvocationError,
    AppPlan,
    AppRequest,
    ScriptedApp,
)
from .daemon import DaemonEmulator, build_raw_request, sorted_query
from .plugin_process import REPO_ROOT, PluginProcess, PluginStartError
from .wechat import (
    TAMPER_KINDS,
    WECHAT_FAILURE_TEXT,
    Attempt,
    Delivery,
    WeChatSimulator,
    WeChatUser,
)

__all__ = [
    "DEFAULT_APP_ID",
    "REPO_ROOT",
    "TAMPER_KINDS",
    "WECHAT_FAILURE_TEXT",
    "AppInvocationError",
    "AppPlan",
    "AppRequest",
    "Attempt",
    "DaemonEmulator",
    "Delivery",
    "PluginProcess",
    "PluginStartError",
    "ScriptedApp",
    "WeChatSimulator",
    "WeChatUser",
    "build_raw_request",
    "sorted_query",
]
