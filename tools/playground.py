"""Local playground: chat with the plugin as a WeChat user, no Dify and no WeChat needed.

The plugin runs exactly as Dify runs it (``python -m main``, serverless mode) under the
tests' daemon emulator. The Dify app is an ECHO STAND-IN, not a model. Every line you type
is signed (and encrypted in safe mode) like WeChat does it, delivered with WeChat's real
5-second deadline and retries, and you see what the WeChat client would show.

    make run            (without a .env)
"""

from __future__ import annotations

import secrets
import string
import sys

from tests.emulator import DaemonEmulator, ScriptedApp, WeChatSimulator
from tests.emulator.apps import AppRequest

BANNER = """\
────────────────────────────────────────────────────────────────────
 WeChat ⇄ Dify playground
 The Dify app here is an ECHO STAND-IN (not a model): it answers
 "[echo stand-in] <your message>", after /slow seconds if you set them.
 Type as a WeChat user. Commands of the playground itself:
   /slow <seconds>     make the stand-in app take that long (try 7 or 20)
   /mode plain|safe    WeChat's encryption mode (safe = 安全模式)
   /md                 make the stand-in answer with markdown and a long text
   /quit               leave
 Plugin commands work too: /help, /clear, and "1" for the rest of a long answer.
────────────────────────────────────────────────────────────────────"""

_INTRO = "## 示例回答\n\n**加粗**、*斜体*、`代码` 和 [链接](https://dify.ai)。\n\n"
_SECTION = "### 第 {i} 节\n\n- 要点一：" + "这是一段用来演示分段发送的长文本。" * 12
LONG_MARKDOWN = _INTRO + "\n\n".join(_SECTION.format(i=i) for i in range(1, 6))


def main() -> int:
    alphabet = string.ascii_letters + string.digits
    settings = {
        "app": {"app_id": "playground-app", "inputs": {}},
        "wechat_token": "playground" + secrets.token_hex(4),
        "app_id": "wx" + secrets.token_hex(8),
        "encoding_aes_key": "".join(secrets.choice(alphabet) for _ in range(43)),
    }
    state = {"markdown": False}

    def respond(request: AppRequest) -> str:
        if state["markdown"]:
            return LONG_MARKDOWN
        return f"[echo stand-in] {request.query}"

    app = ScriptedApp("chat", respond, 0.2, app_id="playground-app")
    print(BANNER)
    print("Starting the plugin (python -m main, serverless) …", flush=True)
    with DaemonEmulator(settings, app) as emulator:
        mode = "safe"

        def new_simulator() -> WeChatSimulator:
            return WeChatSimulator(
                emulator.url("/wechat"),
                settings["wechat_token"],  # type: ignore[arg-type]
                settings["app_id"],  # type: ignore[arg-type]
                settings["encoding_aes_key"],  # type: ignore[arg-type]
                mode=mode,  # type: ignore[arg-type]
            )

        simulator = new_simulator()
        user = simulator.user("o-playground-user")
        print(f"Endpoint: {emulator.url('/wechat')} (mode: {mode})\n")
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if not line:
                continue
            if line == "/quit":
                return 0
            if line.startswith("/slow"):
                try:
                    app.latency = float(line.split()[1])
                    print(f"   (stand-in app now takes {app.latency:g} s)")
                except (IndexError, ValueError):
                    print("   usage: /slow <seconds>")
                continue
            if line.startswith("/mode"):
                wanted = line.split()[1] if len(line.split()) > 1 else ""
                if wanted not in ("plain", "safe"):
                    print("   usage: /mode plain|safe")
                    continue
                mode = wanted
                if mode == "plain":
                    emulator.set_settings(encoding_aes_key="")
                else:
                    emulator.set_settings(encoding_aes_key=settings["encoding_aes_key"])
                simulator = new_simulator()
                user = simulator.user("o-playground-user")
                print(f"   (WeChat now uses {mode} mode)")
                continue
            if line == "/md":
                state["markdown"] = not state["markdown"]
                print(f"   (markdown answers {'on' if state['markdown'] else 'off'})")
                continue
            seen = user.say(line)
            delivery = user.last
            if delivery is not None:
                for attempt in delivery.attempts:
                    outcome = "timed out" if attempt.timed_out else f"HTTP {attempt.status}"
                    took = f"{attempt.elapsed:.2f} s"
                    print(f"   · delivery {attempt.index + 1}: {outcome} after {took}")
            if not seen:
                print("wechat> (nothing shown: acknowledged silently)")
            for item in seen:
                text = item if isinstance(item, str) else " ".join(map(str, item))
                print("wechat> " + text.replace("\n", "\n        "))


if __name__ == "__main__":
    sys.exit(main())
