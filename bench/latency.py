"""In-window delivery latency: how long after the Dify app finishes does the WeChat user
see the answer?

Runs the plugin as Dify does (``python -m main``, serverless) under the tests' daemon
emulator with WeChat's real timing (5 s per delivery, up to 3 deliveries), for a range of
app latencies, several users at once per latency. Prints a table:

    app latency | outcome | app→user median / max | app calls per message

Usage: ``.venv/bin/python -m bench.latency [--messages N] [--scale S]``
(``--scale`` < 1 shortens every WeChat deadline for a quick run; timing claims in the README
come from ``--scale 1``).
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import string
import threading
from collections import Counter
from typing import Any

from tests.emulator import DaemonEmulator, ScriptedApp, WeChatSimulator

LATENCIES = (0.5, 1.0, 2.0, 3.0, 4.0, 4.3, 4.8, 7.0)


def run(latency: float, messages: int, scale: float) -> dict[str, Any]:
    alphabet = string.ascii_letters + string.digits
    settings = {
        "app": {"app_id": "bench-app"},
        "wechat_token": "bench" + secrets.token_hex(4),
        "app_id": "wx" + secrets.token_hex(8),
        "encoding_aes_key": "".join(secrets.choice(alphabet) for _ in range(43)),
    }
    app = ScriptedApp.echo(latency=latency * scale, app_id="bench-app")
    env = {"WECHAT_PLUGIN_TIME_SCALE": str(scale)}
    with DaemonEmulator(settings, app, env=env) as emulator:
        sim = WeChatSimulator(
            emulator.url("/wechat"),
            settings["wechat_token"],  # type: ignore[arg-type]
            settings["app_id"],  # type: ignore[arg-type]
            settings["encoding_aes_key"],  # type: ignore[arg-type]
            mode="safe",
            time_scale=scale,
        )
        results: list[tuple[str, float | None]] = []
        lock = threading.Lock()

        def one(index: int) -> None:
            question = f"question {index}"
            delivery = sim.deliver(sim.text(f"o-bench-{index}", question))
            answered = delivery.answered_by
            seen_at = (
                delivery.started_at + answered.started + answered.elapsed if answered else None
            )
            call = next((c for c in emulator.app_calls if c["query"] == question), None)
            gap = seen_at - call["ended"] if seen_at and call and call["ended"] else None
            outcome = "answer" if delivery.text == f"echo: {question}" else "too-slow reply"
            with lock:
                results.append((outcome, gap if outcome == "answer" else None))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(messages)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60 * max(scale, 0.2))
        emulator.wait_idle()
        calls = Counter(c["query"] for c in emulator.app_calls)
    gaps = [g for _, g in results if g is not None]
    return {
        "latency": latency,
        "outcomes": Counter(o for o, _ in results),
        "median": statistics.median(gaps) if gaps else None,
        "max": max(gaps) if gaps else None,
        "calls_per_message": max(calls.values()) if calls else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4, help="users per latency")
    parser.add_argument("--scale", type=float, default=1.0, help="WeChat time scale")
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, scale {args.scale}")
    print("| app latency (s) | what users saw | app→user median (s) | max (s) | app calls/msg |")
    print("|---|---|---|---|---|")
    for latency in LATENCIES:
        row = run(latency, args.messages, args.scale)
        outcomes = ", ".join(f"{n}× {o}" for o, n in sorted(row["outcomes"].items()))
        median = "–" if row["median"] is None else f"{row['median']:.3f}"
        worst = "–" if row["max"] is None else f"{row['max']:.3f}"
        print(
            f"| {latency:g} | {outcomes} | {median} | {worst} | {row['calls_per_message']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
