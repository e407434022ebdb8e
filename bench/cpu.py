"""CPU time per message of our intake path, against the same steps done with wechatpy.

Why: every WeChat delivery is signature-checked, decrypted, parsed, answered, formatted and
encrypted inside one gevent process, so CPU per message bounds how many users one plugin
process can serve and how much one request delays the others. wechatpy is the reference
most Python WeChat bridges run on; ours should cost no more per message.

Ours calls the functions ``intake.handle_post`` calls, in its order, minus storage and the
app: ``_verify_and_parse`` (timestamp window, ``signature``, XML, ``msg_signature``, AES,
XML again, model), then what ``answering.finish_answer`` does with the app's answer
(``AnswerKit.compose``: ``markdown_to_wechat_text``, the full-answer-page check,
``paginate``), then ``_render`` (reply XML, AES, envelope signature). wechatpy does
``check_signature``, ``WeChatCrypto.decrypt_message``, ``parse_message``,
``TextReply(...).render()`` and ``WeChatCrypto.encrypt_message``. Both get the same
request, built and signed by the tests' WeChat simulator, and the same answer text
(markdown). wechatpy does no markdown formatting, so the table also shows ours with the
formatting step left out, the like-for-like comparison.

Each variant runs ``--iterations`` messages in a tight loop with the garbage collector off
(as ``timeit`` does); the best of ``--repeats`` rounds counts (variants interleaved, so
drift hits all alike). CPU is ``time.process_time``, wall ``time.perf_counter``. When ours
is slower (or with ``--profile``) cProfile shows where our time goes.

Usage: ``.venv/bin/python -m bench.cpu [--iterations N] [--repeats N] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import secrets
import string
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xmltodict
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

from bench._common import machine
from endpoints.wechat.answering import AnswerKit, Question
from endpoints.wechat.coordinator import Action, Decision
from endpoints.wechat.dify_app import AppAnswer
from endpoints.wechat.intake import HttpReply, HttpRequest, _render, _verify_and_parse
from endpoints.wechat.settings import Settings, load_settings
from endpoints.wechat.storage import EndpointStore
from tests.emulator import REPO_ROOT, WeChatSimulator
from tests.fakes import MemoryStorage

TARGET = 1.0
"""Ours / wechatpy CPU per message."""

QUESTION = "Dify 是什么？请用 markdown 简单介绍一下，并给一个例子。"
ANSWER = """## Dify 简介

Dify 是一个 **开源** 的 LLM 应用开发平台，把 *提示词编排*、知识库和 Agent 放在一起。

主要功能：

1. 工作流（Workflow）编排，支持分支与循环
2. RAG 知识库检索，支持 `PDF`、`Markdown` 等格式
3. Agent 与工具调用，例如搜索和代码执行

| 功能 | 说明 |
|---|---|
| 对话 | 多轮、带记忆 |
| 插件 | 扩展端点与工具 |

示例代码：

```python
from dify_client import ChatClient
print(ChatClient("key").create_chat_message({}, "你好", "user"))
```

> 提示：生产环境请使用 ~~测试~~ 正式的 API Key。

更多信息见 [官方文档](https://docs.dify.ai)。"""
"""A typical app answer: headings, emphasis, lists, a table, code, a link."""

Pipeline = Callable[[], object]


@dataclass
class Case:
    """One WeChat push in one mode, plus both implementations' state for it."""

    mode: str
    settings: Settings
    request: HttpRequest
    token: str
    app_id: str
    aes_key: str
    now: int

    @property
    def query(self) -> dict[str, str]:
        return dict(self.request.query)

    @property
    def body(self) -> str:
        return self.request.body.decode("utf-8")


def make_case(mode: str) -> Case:
    """A text message as WeChat signs (and, in safe mode, encrypts) it."""
    alphabet = string.ascii_letters + string.digits
    token = "bench" + secrets.token_hex(4)
    app_id = "wx" + secrets.token_hex(8)
    aes_key = "".join(secrets.choice(alphabet) for _ in range(43))
    encrypted = mode == "safe"
    sim = WeChatSimulator(
        "http://127.0.0.1:9/wechat",  # never contacted: only build_request is used
        token,
        app_id,
        aes_key if encrypted else None,
        mode="safe" if encrypted else "plain",
    )
    now = int(time.time())
    xml = sim.text("oBenchUser0123456789abcdefgh", QUESTION)
    params, body = sim.build_request(xml, timestamp=now)
    settings = load_settings(
        {
            "app": {"app_id": "bench-app", "inputs": {}, "files": []},
            "wechat_token": token,
            "app_id": app_id,
            "encoding_aes_key": aes_key if encrypted else "",
        }
    )
    request = HttpRequest("POST", params, body.encode("utf-8"), {"Content-Type": "text/xml"})
    return Case(mode, settings, request, token, app_id, aes_key, now)


# --- ours -------------------------------------------------------------------------------------


def formatter(case: Case) -> Callable[[], list[str]]:
    """What ``answering.finish_answer`` does with the app's answer: ``AnswerKit.compose``
    (markdown → WeChat text, the check for a full-answer page, splitting into parts).
    Without a public URL (``page_base``) no page is stored: storage is not CPU."""
    clock: Callable[[], float] = lambda: float(case.now)  # noqa: E731
    kit = AnswerKit(case.settings, EndpointStore(MemoryStorage(), "bench"), "bench", None, clock)
    question = Question(openid="oBenchUser0123456789abcdefgh", query=QUESTION)
    answer = AppAnswer(ANSWER, None)
    return lambda: kit.compose(question, QUESTION, answer, lambda: False)


def ours_steps(case: Case) -> dict[str, Pipeline]:
    """Our stages and the whole path, as closures over one prepared request."""
    settings, request, now = case.settings, case.request, case.now
    clock: Callable[[], float] = lambda: float(now)  # noqa: E731
    verified = _verify_and_parse(request, settings, now, "bench")
    compose = formatter(case)
    reply_text = compose()[0]

    def intake() -> object:
        return _verify_and_parse(request, settings, now, "bench")

    def reply() -> object:
        return _render(Decision(Action.REPLY, reply_text), verified, settings, clock, now)

    def full() -> HttpReply:
        checked = _verify_and_parse(request, settings, now, "bench")
        part = compose()[0]
        return _render(Decision(Action.REPLY, part), checked, settings, clock, now)

    def unformatted() -> HttpReply:
        checked = _verify_and_parse(request, settings, now, "bench")
        return _render(Decision(Action.REPLY, ANSWER), checked, settings, clock, now)

    return {
        "verify+decrypt+parse": intake,
        "format": compose,
        "reply+encrypt": reply,
        "full": full,
        "full, no markdown": unformatted,
    }


# --- wechatpy --------------------------------------------------------------------------------


def wechatpy_steps(case: Case) -> dict[str, Pipeline]:
    """The same stages with wechatpy (no formatting step: it sends the text as it is)."""
    query, body, token = case.query, case.body, case.token
    signature, timestamp, nonce = query["signature"], query["timestamp"], query["nonce"]
    encrypted = case.mode == "safe"
    crypto = WeChatCrypto(token, case.aes_key, case.app_id) if encrypted else None
    msg_signature = query.get("msg_signature", "")

    def intake() -> Any:
        check_signature(token, signature, timestamp, nonce)
        xml = body
        if crypto is not None:
            xml = crypto.decrypt_message(body, msg_signature, timestamp, nonce)
        return parse_message(xml)

    message = intake()

    def reply() -> str:
        xml = TextReply(content=ANSWER, message=message).render()
        if crypto is not None:
            xml = crypto.encrypt_message(xml, nonce, timestamp)
        return str(xml)

    def full() -> str:
        check_signature(token, signature, timestamp, nonce)
        xml = body
        if crypto is not None:
            xml = crypto.decrypt_message(body, msg_signature, timestamp, nonce)
        msg = parse_message(xml)
        out = TextReply(content=ANSWER, message=msg).render()
        if crypto is not None:
            out = crypto.encrypt_message(out, nonce, timestamp)
        return str(out)

    return {"verify+decrypt+parse": intake, "reply+encrypt": reply, "full": full}


def check_outputs(case: Case) -> None:
    """Refuse to time an error path: both replies must open (with wechatpy) to the text."""
    ours = ours_steps(case)["full"]()
    theirs = wechatpy_steps(case)["full"]()
    assert isinstance(ours, HttpReply) and ours.status == 200, ours
    expected = formatter(case)()[0]
    for name, body, text in (("ours", ours.body, expected), ("wechatpy", theirs, ANSWER)):
        if case.mode == "safe":
            crypto = WeChatCrypto(case.token, case.aes_key, case.app_id)
            env = xmltodict.parse(body)["xml"]
            body = crypto.decrypt_message(body, env["MsgSignature"], env["TimeStamp"], env["Nonce"])
        content = xmltodict.parse(body)["xml"]["Content"]
        if content != text:
            raise SystemExit(f"{case.mode}: {name}'s reply does not carry the answer")


# --- timing ----------------------------------------------------------------------------------


@dataclass
class Timing:
    cpu: float = float("inf")
    """Best CPU seconds per message."""
    wall: float = float("inf")


def measure(variants: dict[str, Pipeline], iterations: int, repeats: int) -> dict[str, Timing]:
    """Best-of-``repeats`` per-message CPU and wall time of each variant, interleaved."""
    best = {name: Timing() for name in variants}
    for variant in variants.values():  # warm caches (regex, markdown-it rules, AES)
        for _ in range(max(10, iterations // 20)):
            variant()
    was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            for name, variant in variants.items():
                gc.collect()
                gc.disable()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(iterations):
                    variant()
                cpu1, wall1 = time.process_time(), time.perf_counter()
                gc.enable()
                t = best[name]
                t.cpu = min(t.cpu, (cpu1 - cpu0) / iterations)
                t.wall = min(t.wall, (wall1 - wall0) / iterations)
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
    return best


def us(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e6:,.1f}"


# --- profiling -------------------------------------------------------------------------------


def _owner(filename: str) -> str:
    """Who a profiled function belongs to: a site package, our module, or the stdlib."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    try:
        return str(path.resolve().relative_to(REPO_ROOT).with_suffix("")).replace("/", ".")
    except ValueError:
        return "stdlib: " + path.stem


def profile(case: Case, variant: str, iterations: int, top: int = 14) -> list[str]:
    """cProfile one of our variants: own time by owner, then the costliest functions."""
    run = ours_steps(case)[variant]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(iterations):
        run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values()) or 1.0
    by_owner: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tt, _, _) in raw.items():
        by_owner[_owner(filename)] += tt
    lines = [
        f"cProfile of ours `{variant}`, {case.mode} mode, {iterations} messages "
        "(the profiler inflates every number; compare shares):",
        "",
        "| own time by package/module | µs/msg | share |",
        "|---|---|---|",
    ]
    for owner, tt in sorted(by_owner.items(), key=lambda kv: -kv[1])[:10]:
        if tt / total >= 0.01:
            lines.append(f"| {owner} | {us(tt / iterations)} | {tt / total:.0%} |")
    lines += [
        "",
        "| function | calls/msg | cumulative µs/msg | own µs/msg |",
        "|---|---|---|---|",
    ]
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][3])
    shown = 0
    for (filename, line, func), (_, nc, tt, ct, _) in ranked:
        if _owner(filename) == "bench.cpu" or func.startswith("<method 'disable'"):
            continue
        where = f"{_owner(filename)}:{line}" if line else _owner(filename)
        lines.append(
            f"| `{func}` ({where}) | {nc / iterations:g} | {us(ct / iterations)} "
            f"| {us(tt / iterations)} |"
        )
        shown += 1
        if shown >= top:
            break
    return lines


# --- report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500, help="messages per round")
    parser.add_argument("--repeats", type=int, default=15, help="rounds; the best counts")
    parser.add_argument("--modes", default="plain,safe", help="comma-separated: plain,safe")
    parser.add_argument("--profile", action="store_true", help="profile ours even when faster")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("plain", "safe") for m in modes):
        parser.error("modes are plain and safe")

    print(f"# {machine()}; load average {os.getloadavg()[0]:.2f} at the start")
    print(
        f"# best of {args.repeats} × {args.iterations} messages per variant; "
        f"question {len(QUESTION.encode())} B, answer {len(ANSWER.encode())} B of markdown"
    )
    print()
    print("| mode | step | ours CPU µs/msg | wechatpy CPU µs/msg | ours/wechatpy | ours wall µs |")
    print("|---|---|---|---|---|---|")
    ratios: dict[str, tuple[float, float]] = {}
    slower: list[Case] = []
    for mode in modes:
        case = make_case(mode)
        check_outputs(case)
        ours_variants = ours_steps(case)
        theirs_variants = wechatpy_steps(case)
        variants = {f"ours {k}": v for k, v in ours_variants.items()}
        variants.update({f"wechatpy {k}": v for k, v in theirs_variants.items()})
        best = measure(variants, args.iterations, args.repeats)
        for step in ours_variants:
            mine = best[f"ours {step}"]
            theirs_step = "full" if step == "full, no markdown" else step
            theirs = best.get(f"wechatpy {theirs_step}")
            ratio = f"{mine.cpu / theirs.cpu:.2f}" if theirs else "– (wechatpy: none)"
            print(
                f"| {mode} | {step} | {us(mine.cpu)} | {us(theirs.cpu if theirs else None)} "
                f"| {ratio} | {us(mine.wall)} |",
                flush=True,
            )
        full_ratio = best["ours full"].cpu / best["wechatpy full"].cpu
        bare_ratio = best["ours full, no markdown"].cpu / best["wechatpy full"].cpu
        ratios[mode] = (full_ratio, bare_ratio)
        if full_ratio > TARGET or args.profile:
            slower.append(case)
    print()
    print(
        "wechatpy does no formatting: it replies with the markdown as it is, so `full` compares "
        "our whole path (markdown → WeChat text included) with less work on wechatpy's side; "
        "`full, no markdown` is the like-for-like comparison (ours replying with the raw text)."
    )
    print()
    for mode, (full_ratio, bare_ratio) in ratios.items():
        verdict = "met" if full_ratio <= TARGET else "MISSED"
        print(
            f"**{mode}:** ours/wechatpy CPU per message {full_ratio:.2f} with markdown "
            f"formatting (target ≤ {TARGET:g}: {verdict}), {bare_ratio:.2f} without."
        )
    for case in slower:
        for variant in ("full", "full, no markdown"):
            print()
            print("\n".join(profile(case, variant, max(200, args.iterations // 4))))


if __name__ == "__main__":
    main()
