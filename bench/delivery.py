"""Delivery of slow answers: push, fetch and auto, with WeChat's real timing.

Runs the plugin as Dify does (``python -m main``, serverless) under the tests' daemon
emulator, with the loopback fake WeChat API behind ``wechat_api_base_url`` and WeChat's real
delivery timing (5 s per delivery, up to 3 deliveries, ``WECHAT_PLUGIN_TIME_SCALE=1``). For
each delivery mode and app latency a few users (one message each, distinct OpenIDs) write at
about the same time; all latencies of one mode run side by side against one emulator.

Each user behaves like a person: they read what WeChat shows them; when a reply asks them to
send the fetch keyword (「1」) and the answer has not come yet, they send it at once, again
and again until the answer arrives (bounded). Pushed customer-service messages are taken
from the fake API with their arrival times.

Per message it measures the time from the app finishing (``emu.app_calls[…]["ended"]``) to
the user first seeing the answer — a passive reply (when the answering HTTP response
arrived), a pushed message (when the fake API accepted it) or the reply to a fetch message —
plus app invocations, lost answers (never seen) and duplicates (seen more than once,
passive and pushed together). Prints a markdown table, a summary against the targets and
the timeline of every message that went wrong.

Usage: ``.venv/bin/python -m bench.delivery [--quick] [--modes push,fetch]
[--latencies 1,7,20] [--users N] [--processes N] [--stagger S]`` (the full run takes about
three minutes, ``--quick`` about one).
"""

from __future__ import annotations

import argparse
import platform
import re
import secrets
import statistics
import string
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.emulator import (
    WECHAT_FAILURE_TEXT,
    AppPlan,
    AppReply,
    AppRequest,
    DaemonEmulator,
    Delivery,
    ScriptedApp,
    WeChatSimulator,
)
from tests.fake_wechat_api import FakeWeChatAPI

MODES = ("push", "fetch", "auto")
LATENCIES = (1.0, 4.0, 4.8, 7.0, 9.8, 12.0, 14.5, 20.0, 60.0)
QUICK_LATENCIES = (1.0, 7.0, 14.5, 20.0)
APP_ID = "bench-app"
KEYWORD = "1"
IN_WINDOW_TARGET = 0.3
"""Seconds from the app finishing to the user seeing an answer given inside the window."""
SETTLE_AFTER = 30.0
"""How long after the slowest app's answer the run waits for the last pushes."""
WAITING_PREFIX = "问题有点复杂"
"""How both default hand-off texts (push and fetch) begin."""
USER_PATIENCE = 45.0
"""A user stops sending the fetch keyword this long after the app should have answered."""


@dataclass
class Sighting:
    at: float
    """``time.monotonic()`` when the user saw it."""
    channel: str
    """``passive`` (reply to the question), ``fetch`` (reply to a keyword), ``push``."""
    text: str
    response_time: float | None = None
    """Passive and fetch replies: how long the answering HTTP attempt took (WeChat gives
    up after 5 s)."""


@dataclass
class Message:
    mode: str
    latency: float
    openid: str
    question: str
    started: float = 0.0
    seen: list[Sighting] = field(default_factory=list)
    fetches: int = 0
    problems: list[str] = field(default_factory=list)
    # filled in after the run
    calls: list[dict[str, Any]] = field(default_factory=list)
    gap: float | None = None
    via: str = "lost"
    copies: int = 0

    @property
    def answer(self) -> str:
        return f"echo: {self.question}"

    @property
    def wechat_failed(self) -> bool:
        """WeChat showed its own failure text (no usable reply to some delivery)."""
        return any(s.text == WECHAT_FAILURE_TEXT for s in self.seen)


class TimedEchoApp(ScriptedApp):
    """A chat app answering ``echo: <query>``, each query with its own latency."""

    def __init__(self) -> None:
        super().__init__("chat", lambda req: f"echo: {req.query}", app_id=APP_ID)
        self.latencies: dict[str, float] = {}

    def _build_plan(self, req: AppRequest, answer: str | AppReply | BaseException) -> AppPlan:
        timed = ScriptedApp("chat", latency=self.latencies.get(req.query or "", 0.0), app_id=APP_ID)
        return timed._build_plan(req, answer)


def make_settings(mode: str, api: FakeWeChatAPI) -> dict[str, Any]:
    alphabet = string.ascii_letters + string.digits
    return {
        "app": {"app_id": APP_ID, "inputs": {}, "files": []},
        "wechat_token": "bench" + secrets.token_hex(4),
        "app_id": api.app_id,
        "encoding_aes_key": "".join(secrets.choice(alphabet) for _ in range(43)),
        "app_secret": api.app_secret,
        "wechat_api_base_url": api.base_url,
        "delivery_mode": mode,
        "fetch_keyword": KEYWORD,
    }


def seen_at(delivery: Delivery) -> float:
    """When the user saw what this delivery showed (the answering response, or WeChat
    giving up after the last attempt)."""
    attempt = delivery.answered_by or (delivery.attempts[-1] if delivery.attempts else None)
    if attempt is None:
        return delivery.started_at
    return delivery.started_at + attempt.started + attempt.elapsed


def shown(delivery: Delivery) -> str:
    if delivery.text is not None:
        return delivery.text
    if not delivery.user_saw:
        return "(nothing: success/empty reply)"
    return repr(delivery.user_saw)


def converse(sim: WeChatSimulator, api: FakeWeChatAPI, msg: Message) -> None:
    """One user: send the question, then follow the replies' instructions."""
    msg.started = time.monotonic()
    give_up = msg.started + msg.latency + USER_PATIENCE
    channel, content = "passive", msg.question
    hint = f"「{KEYWORD}」"
    while True:
        api.user_interacted(msg.openid)
        delivery = sim.deliver(sim.text(msg.openid, content))
        text = shown(delivery)
        answered = delivery.answered_by
        took = answered.elapsed if answered else None
        msg.seen.append(Sighting(seen_at(delivery), channel, text, took))
        if delivery.problem:
            msg.problems.append(f"{channel} delivery failed: {delivery.problem}")
        if msg.answer in text or hint not in text or time.monotonic() > give_up:
            return
        if any(msg.answer in t for _, t in api.timed_texts(msg.openid)):
            return  # pushed meanwhile: nothing to fetch
        channel, content = "fetch", KEYWORD
        msg.fetches += 1


def judge(msg: Message, app_calls: list[dict[str, Any]], api: FakeWeChatAPI) -> None:
    msg.calls = [c for c in app_calls if c["query"] == msg.question]
    for at, text in api.timed_texts(msg.openid):
        msg.seen.append(Sighting(at, "push", text))
    msg.seen.sort(key=lambda s: s.at)
    answers = [s for s in msg.seen if msg.answer in s.text]
    msg.copies = len(answers)
    if not answers:
        return
    first = answers[0]
    msg.via = first.channel
    ended = msg.calls[0]["ended"] if msg.calls else None
    if ended is not None:
        msg.gap = first.at - ended
    for call in msg.calls:
        if call.get("cut") or call.get("error") or call.get("abandoned"):
            msg.problems.append(
                f"app call cut={call.get('cut')} error={call.get('error')} "
                f"abandoned={call.get('abandoned')}"
            )


def run_mode(
    mode: str, latencies: Iterable[float], users: int, processes: int, stagger: float
) -> tuple[list[Message], list[str]]:
    """All latencies of one mode side by side; returns the messages and odd observations."""
    latencies = list(latencies)
    app = TimedEchoApp()
    odd: list[str] = []
    with FakeWeChatAPI() as api:
        settings = make_settings(mode, api)
        emulator = DaemonEmulator(
            settings,
            app,
            processes=processes,
            env={"WECHAT_PLUGIN_TIME_SCALE": "1"},
            max_invocation_timeout=30,
            max_execution_timeout=max(120.0, max(latencies) + 60.0),
        )
        with emulator:
            sim = WeChatSimulator(
                emulator.url("/wechat"),
                settings["wechat_token"],
                settings["app_id"],
                settings["encoding_aes_key"],
                mode="safe",
                time_scale=1.0,
            )
            run_id = secrets.token_hex(3)
            messages: list[Message] = []
            for latency in latencies:
                for user in range(users):
                    question = f"{mode} {latency:g}s user {user} #{run_id}"
                    app.latencies[question] = latency
                    openid = f"o-{mode}-{latency:g}-{user}-{run_id}".replace(".", "_")
                    messages.append(Message(mode, latency, openid, question))
            threads = [
                threading.Thread(target=converse, args=(sim, api, m), daemon=True) for m in messages
            ]
            for index, thread in enumerate(threads):
                if index:
                    time.sleep(stagger)
                thread.start()
            horizon = time.monotonic() + max(latencies) + USER_PATIENCE + 30.0
            for thread in threads:
                thread.join(timeout=max(1.0, horizon - time.monotonic()))
            if any(t.is_alive() for t in threads):
                odd.append("some simulated users were still talking at the end of the run")
            # Workers push after the window: wait until every request (worker included) ended.
            if not emulator.wait_idle(timeout=max(latencies) + SETTLE_AFTER):
                odd.append(f"{emulator.live_sessions()} request(s) still running at the end")
            time.sleep(0.5)
            calls = emulator.app_calls
            for msg in messages:
                judge(msg, calls, api)
            questions = {m.question for m in messages}
            strays = Counter(str(c["query"]) for c in calls if c["query"] not in questions)
            for query, n in strays.items():
                odd.append(f"{n} app call(s) with query {query!r} (not a user question)")
            odd.extend(f"emulator error: {e}" for e in emulator.errors)
            if emulator.late_calls:
                kinds = Counter(str(c["type"]) for c in emulator.late_calls)
                odd.append(f"backwards calls after their session closed: {dict(kinds)}")
            odd.extend(log_findings(emulator.plugin_logs()))
    return messages, odd


def log_findings(logs: str, limit: int = 8) -> list[str]:
    """Distinct warning/error lines of the plugin log (numbers masked), most frequent first."""
    found: Counter[str] = Counter()
    for line in logs.splitlines():
        if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line):
            found[re.sub(r"\d+(\.\d+)?", "N", line.strip())[:200]] += 1
    return [f"plugin log ({n}×): {line}" for line, n in found.most_common(limit)]


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def row(mode: str, latency: float, group: list[Message]) -> str:
    gaps = [m.gap for m in group if m.gap is not None]
    invocations = sorted({len(m.calls) for m in group})
    via = Counter(m.via for m in group)
    fetches = sum(m.fetches for m in group)
    via_text = ", ".join(f"{n}× {v}" for v, n in sorted(via.items()))
    if fetches:
        via_text += f" ({fetches} keyword msgs)"
    return (
        f"| {mode} | {latency:g} | {len(group)} "
        f"| {fmt(statistics.median(gaps) if gaps else None)} | {fmt(max(gaps) if gaps else None)} "
        f"| {'/'.join(str(i) for i in invocations)} "
        f"| {sum(1 for m in group if m.copies == 0)} "
        f"| {sum(max(0, m.copies - 1) for m in group)} | {via_text} |"
    )


def summary(messages: list[Message]) -> str:
    passive = [m.gap for m in messages if m.via == "passive" and m.gap is not None]
    late = {
        via: [m.gap for m in messages if m.via == via and m.gap is not None]
        for via in ("push", "fetch")
    }
    lost = sum(1 for m in messages if m.copies == 0)
    dups = sum(max(0, m.copies - 1) for m in messages)
    bad_calls = sum(1 for m in messages if len(m.calls) != 1)
    worst = max(passive) if passive else None
    slowest = max(
        (s.response_time for m in messages for s in m.seen if s.response_time is not None),
        default=None,
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    parts = [
        f"in-window answers {len(passive)}, max app→user {fmt(worst)} s "
        f"(target ≤{IN_WINDOW_TARGET} s: {verdict(worst is None or worst <= IN_WINDOW_TARGET)})",
        f"duplicates {dups} (target 0: {verdict(dups == 0)})",
        f"lost {lost} (target 0: {verdict(lost == 0)})",
        f"messages without exactly 1 app call {bad_calls} (target 0: {verdict(bad_calls == 0)})",
    ]
    parts.extend(
        f"{via} max app→user {fmt(max(gaps))} s over {len(gaps)}"
        for via, gaps in late.items()
        if gaps
    )
    parts.append(f"slowest reply to WeChat {fmt(slowest)} s (WeChat hangs up at 5 s)")
    return "**Summary:** " + "; ".join(parts) + "."


def expected_text(msg: Message, text: str) -> bool:
    return msg.answer in text or text.startswith(WAITING_PREFIX)


def anomalies(messages: list[Message]) -> list[str]:
    out: list[str] = []
    for m in messages:
        reasons = list(m.problems)
        if m.copies == 0:
            reasons.append("answer never seen")
        if m.copies > 1:
            reasons.append(f"answer seen {m.copies}×")
        if len(m.calls) != 1:
            reasons.append(f"{len(m.calls)} app calls")
        if any(not expected_text(m, s.text) for s in m.seen):
            reasons.append("unexpected text shown")
        if m.wechat_failed:
            reasons.append("WeChat showed its failure text")
        if not reasons:
            continue
        out.append(f"- {m.mode} {m.latency:g} s, {m.openid}: {'; '.join(dict.fromkeys(reasons))}")
        for call in m.calls:
            ended = call["ended"]
            out.append(
                f"    - app call +{call['started'] - m.started:.2f} s → "
                + ("never ended" if ended is None else f"+{ended - m.started:.2f} s")
            )
        for s in m.seen:
            out.append(f"    - +{s.at - m.started:.2f} s {s.channel}: {s.text[:80]!r}")
    return out


def parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="latencies 1, 7, 14.5, 20 only")
    parser.add_argument("--latencies", type=parse_floats, help="comma-separated app latencies")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: push,fetch,auto")
    parser.add_argument("--users", type=int, default=3, help="users (messages) per latency")
    parser.add_argument("--processes", type=int, default=1, help="plugin processes")
    parser.add_argument(
        "--stagger", type=float, default=0.1, help="seconds between two users' first messages"
    )
    args = parser.parse_args()
    latencies = args.latencies or (QUICK_LATENCIES if args.quick else LATENCIES)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; use {', '.join(MODES)}")

    print(
        f"# {platform.platform()}, Python {platform.python_version()}, time scale 1, "
        f"{args.users} users per latency, {args.processes} plugin process(es)"
    )
    header = (
        "| mode | app latency (s) | messages | app→user median (s) | max (s) "
        "| invocations/msg | lost | duplicates | answered via |"
    )
    everything: list[Message] = []
    observations: list[str] = []
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        began = time.monotonic()
        messages, odd = run_mode(mode, latencies, args.users, args.processes, args.stagger)
        everything.extend(messages)
        observations.extend(f"{mode}: {o}" for o in odd)
        for latency in latencies:
            lines.append(row(mode, latency, [m for m in messages if m.latency == latency]))
        print(f"# {mode}: {time.monotonic() - began:.0f} s", flush=True)
    print()
    print("\n".join(lines))
    print()
    print(summary(everything))
    details = anomalies(everything)
    if details:
        print("\nMessages that went wrong (times after the question was sent):")
        print("\n".join(details))
    if observations:
        print("\nOther observations:")
        print("\n".join(f"- {o}" for o in observations))


if __name__ == "__main__":
    main()
