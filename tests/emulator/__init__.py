"""Run the plugin the way Dify does, under test control.

- :mod:`.plugin_process` — the plugin as a serverless ``python -m main`` subprocess.
- :mod:`.daemon` — :class:`DaemonEmulator`: the Dify plugin daemon + Dify API (endpoint front,
  backwards invocations: storage, scripted apps, ``fetch_app``, file upload, speech2text, tts;
  Dify's file server for uploads and app-produced files) enforcing the session lifetime rule.
- :mod:`.apps` — :class:`ScriptedApp`: Dify apps of every mode with scripted answers, files
  (:class:`AppReply`), timing and parameters (:func:`app_parameters`, :func:`form_field`).
- :mod:`.wechat` — :class:`WeChatSimulator`: WeChat's servers (signing, encryption, retries).

Pure stdlib + requests + wechatpy; never imports ``dify_plugin`` (that would gevent-patch the
test process).
"""

from .apps import (
    DEFAULT_APP_ID,
    DEFAULT_PARAMETERS,
    AppInvocationError,
    AppPlan,
    AppReply,
    AppRequest,
    ScriptedApp,
    app_parameters,
    file_markdown,
    form_field,
)
from .daemon import (
    DEFAULT_MODELS,
    DEFAULT_TRANSCRIPT,
    DEFAULT_TTS_AUDIO,
    FILE_MODEL_IDENTITY,
    DaemonEmulator,
    build_raw_request,
    default_transcriber,
    parse_manifest_permissions,
    parse_multipart,
    sorted_query,
)
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
    "DEFAULT_MODELS",
    "DEFAULT_PARAMETERS",
    "DEFAULT_TRANSCRIPT",
    "DEFAULT_TTS_AUDIO",
    "FILE_MODEL_IDENTITY",
    "REPO_ROOT",
    "TAMPER_KINDS",
    "WECHAT_FAILURE_TEXT",
    "AppInvocationError",
    "AppPlan",
    "AppReply",
    "AppRequest",
    "Attempt",
    "DaemonEmulator",
    "Delivery",
    "PluginProcess",
    "PluginStartError",
    "ScriptedApp",
    "WeChatSimulator",
    "WeChatUser",
    "app_parameters",
    "build_raw_request",
    "default_transcriber",
    "file_markdown",
    "form_field",
    "parse_manifest_permissions",
    "parse_multipart",
    "sorted_query",
]
