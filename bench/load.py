"""Load: many WeChat users writing at the same moment to one slow app, with real timing.

Why: one plugin process serves every user of an Official Account, and a busy moment (a
push notification, a broadcast) brings hundreds of messages within a second. Each of them
holds WeChat's connection for up to 5 s, starts a worker request and an app stream, and
polls or waits for its answer. This checks that under that burst every answer still
arrives exactly once, soon after the app finishes, and that the process stays within the
memory Dify grants it (``resource.memory`` in manifest.yaml).

Runs the plugin as Dify does (``python -m main``, serverless) under the tests' daemon
emulator, with the fake WeChat API for customer-service pushes and WeChat's real delivery
timing (5 s per delivery, up to 3 deliveries, ``WECHAT_PLUGIN_TIME_SCALE=1``), like
bench/delivery.py, whose users, app and judging it reuses: ``--users`` distinct OpenIDs
send one message each, spread evenly over ``--spread`` seconds, to an app answering after
``--latency`` seconds; each user then behaves like a person (reads the reply, sends the
fetch keyword when asked).

The emulator relays every open request on its own thread and checks every
``daemon.POLL_INTERVAL`` (0.02 s) whether the client hung up. With 200 users that is 400+
threads polling 50 times a second, which took more CPU than the plugin and made the
emulator, not the plugin, the bottleneck (on 2 cores, 100 users: 0 % delivered with
0.02 s, 100 % with 0.1 s). Dify's
daemon (Go) has no such cost, so this bench sets the interval to ``--relay-poll`` (0.1 s;
a session then ends at most 0.1 s after WeChat hung up instead of 0.02 s); pass 0.02 for
the emulator's own behaviour.

The emulator's app streams carry a ``ping`` event every second by default; Dify sends one
every 10 s (the emulator's docstring), and with 200 streams open the extra 190 pings a
second are work for both sides that a real deployment does not have. This bench uses
``--ping`` (10 s) instead.

The emulator asks whether a client hung up with ``poll()``: it used ``select()``, which
cannot watch a file descriptor above 1023 and then reported every such client as gone (with
200 users the bench process holds well over a thousand sockets, and requests were cut at
random ~0.1 s after they arrived).

Memory is read from ``/proc/<pid>/status`` of each plugin process (and any child it
starts): ``VmHWM`` (the kernel's peak resident set) at the end, ``VmRSS`` sampled during the
run. CPU seconds of the plugin and of this process (emulator, WeChat simulator, fake API
and the users' threads together, sharing the machine's cores with the plugin) show which
side was the bottleneck.

Usage: ``.venv/bin/python -m bench.load [--users 200] [--latency 8] [--mode auto]
[--processes 1] [--spread 1]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import machine
from bench.delivery import (
    MODES,
    SETTLE_AFTER,
    USER_PATIENCE,
    Message,
    TimedEchoApp,
    anomalies,
    converse,
    judge,
    log_findings,
    make_settings,
)
from tests.emulator import REPO_ROOT, DaemonEmulator, WeChatSimulator
from tests.emulator import daemon as emulator_daemon
from tests.fake_wechat_api import FakeWeChatAPI

MIB = 1024 * 1024
SAMPLE_EVERY = 0.2
"""Seconds between two memory samples."""
RELAY_POLL = 0.1
"""Seconds between the emulator's checks whether WeChat hung up on a request (its own
default, 0.02, costs most of a core with hundreds of requests open; see the docstring)."""
PING_INTERVAL = 10.0
"""Seconds between ``ping`` events on a running app stream (Dify's; the emulator's own
default is 1 s)."""
SHOW_ANOMALIES = 30
"""Lines of per-message timelines printed when messages went wrong."""


def manifest_memory_limit(path: Path = REPO_ROOT / "manifest.yaml") -> int | None:
    """``resource.memory`` of the manifest, in bytes (stdlib only: a two-level YAML scan)."""
    in_resource = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^resource:\s*$", line):
            in_resource = True
        elif in_resource and re.match(r"^\S", line):
            in_resource = False
        elif in_resource and (found := re.match(r"^\s{2}memory:\s*(\d+)\s*$", line)):
            return int(found.group(1))
    return None


def _status_kib(pid: int) -> dict[str, int]:
    """``Vm*`` lines (KiB) and ``Threads`` of /proc/<pid>/status; empty when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        if (line.startswith("Vm") and line.endswith("kB")) or line.startswith("Threads:"):
            name, _, value = line.partition(":")
            out[name] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine spent busy (first line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Children (recursively) via /proc/<pid>/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


@dataclass
class ProcessMemory:
    pid: int
    name: str
    baseline_kib: int = 0
    """VmRSS when the load started (after the plugin's start-up)."""
    peak_rss_kib: int = 0
    """Highest VmRSS seen by sampling."""
    hwm_kib: int = 0
    """VmHWM (kernel-tracked peak) at the last sample."""
    cpu_start: float | None = None
    cpu_end: float | None = None
    peak_threads: int = 0
    """OS threads at most (gevent greenlets are not threads)."""

    @property
    def peak_kib(self) -> int:
        return max(self.peak_rss_kib, self.hwm_kib)

    @property
    def cpu(self) -> float | None:
        if self.cpu_start is None or self.cpu_end is None:
            return None
        return self.cpu_end - self.cpu_start


class MemoryWatch:
    """Samples the plugin processes (and their children) on a daemon thread, bounded."""

    def __init__(self, roots: dict[int, str]) -> None:
        self.roots = roots
        self.procs: dict[int, ProcessMemory] = {}
        self.peak_total_kib = 0
        self.peak_threads = 0
        """Threads of this process (emulator + simulator + fake API + users) at most."""
        self.cpu_trace: list[tuple[float, float, float]] = []
        """(monotonic time, plugin CPU s, this process's CPU s) at every sample."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def sample(self) -> None:
        pids = dict(self.roots)
        for root, name in self.roots.items():
            for child in _descendants(root):
                pids.setdefault(child, f"{name} child {child}")
        total = 0
        plugin_cpu = 0.0
        for pid, name in pids.items():
            status = _status_kib(pid)
            if not status:
                continue
            entry = self.procs.get(pid)
            if entry is None:
                entry = self.procs[pid] = ProcessMemory(pid, name, status.get("VmRSS", 0))
                entry.cpu_start = _cpu_seconds(pid)
            entry.peak_rss_kib = max(entry.peak_rss_kib, status.get("VmRSS", 0))
            entry.hwm_kib = max(entry.hwm_kib, status.get("VmHWM", 0))
            entry.peak_threads = max(entry.peak_threads, status.get("Threads", 0))
            entry.cpu_end = _cpu_seconds(pid)
            plugin_cpu += entry.cpu_end or 0.0
            total += status.get("VmRSS", 0)
        self.peak_total_kib = max(self.peak_total_kib, total)
        self.peak_threads = max(self.peak_threads, threading.active_count())
        own = _cpu_seconds(os.getpid()) or 0.0
        self.cpu_trace.append((time.monotonic(), plugin_cpu, own))

    def busiest_second(self) -> tuple[float, float]:
        """Highest CPU use (cores) over any ~1 s of the run: (plugin, this process)."""
        best = (0.0, 0.0)
        trace = self.cpu_trace
        j = 0
        for i, (t0, p0, b0) in enumerate(trace):
            j = max(j, i + 1)
            while j < len(trace) and trace[j][0] - t0 < 1.0:
                j += 1
            if j >= len(trace):
                break
            t1, p1, b1 = trace[j]
            best = (max(best[0], (p1 - p0) / (t1 - t0)), max(best[1], (b1 - b0) / (t1 - t0)))
        return best

    def per_second(self, seconds: int = 30) -> list[tuple[float, float]]:
        """CPU use (cores) in each whole second from the start: (plugin, this process)."""
        trace = self.cpu_trace
        if not trace:
            return []
        t0 = trace[0][0]
        out: list[tuple[float, float]] = []
        j = 0
        for second in range(seconds):
            start, end = t0 + second, t0 + second + 1
            while j < len(trace) and trace[j][0] < start:
                j += 1
            k = j
            while k < len(trace) and trace[k][0] <= end:
                k += 1
            if k - 1 <= j or k > len(trace):
                break
            a, b = trace[j], trace[k - 1]
            span = b[0] - a[0]
            out.append(((b[1] - a[1]) / span, (b[2] - a[2]) / span))
        return out

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


@dataclass
class Outcome:
    messages: list[Message]
    memory: MemoryWatch
    wall: float
    send_span: float
    """Seconds between the first and the last user's first message."""
    bench_cpu: float
    """CPU seconds of this process during the run."""
    machine_busy: float | None = None
    """CPU seconds of the whole machine (every process) during the run."""
    requests: Counter[str] = field(default_factory=Counter)
    """Front requests (Dify sessions) by endpoint path."""
    storage_calls: int = 0
    storage_by_kind: Counter[str] = field(default_factory=Counter)
    """Storage calls by record kind and operation (``job get``, ``sweep set``…)."""
    late_storage_calls: int = 0
    """Storage calls refused because their session had ended (not in ``storage_calls``)."""
    load_before: float = 0.0
    """1-minute load average when the run started."""
    odd: list[str] = field(default_factory=list)


def run(
    users: int,
    latency: float,
    mode: str,
    processes: int,
    spread: float,
    plugin_log: Path | None = None,
    plugin_env: dict[str, str] | None = None,
    relay_poll: float = RELAY_POLL,
    ping_interval: float = PING_INTERVAL,
) -> Outcome:
    app = TimedEchoApp()
    odd: list[str] = []
    load_before = os.getloadavg()[0]
    emulator_daemon.POLL_INTERVAL = relay_poll  # read by each relay loop; see the docstring
    with FakeWeChatAPI() as api:
        settings = make_settings(mode, api)
        emulator = DaemonEmulator(
            settings,
            app,
            processes=processes,
            env={**(plugin_env or {}), "WECHAT_PLUGIN_TIME_SCALE": "1"},
            max_invocation_timeout=30,
            max_execution_timeout=max(120.0, latency + 60.0),
            startup_timeout=60.0,
            ping_interval=ping_interval,
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
            for user in range(users):
                question = f"load user {user} #{run_id}"
                app.latencies[question] = latency
                messages.append(Message(mode, latency, f"o-load-{user}-{run_id}", question))
            threads = [
                threading.Thread(target=converse, args=(sim, api, m), name=f"user-{i}", daemon=True)
                for i, m in enumerate(messages)
            ]
            watch = MemoryWatch({p.pid: p.name for p in emulator.processes if p.pid is not None})
            watch.start()
            busy0 = _machine_busy_seconds()
            cpu0, began = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            gap = spread / max(1, users - 1) if users > 1 else 0.0
            for index, thread in enumerate(threads):
                wait = began + index * gap - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                thread.start()
            send_span = time.monotonic() - began
            horizon = time.monotonic() + latency + USER_PATIENCE + 30.0
            for thread in threads:
                thread.join(timeout=max(0.1, horizon - time.monotonic()))
            stuck = sum(1 for t in threads if t.is_alive())
            if stuck:
                odd.append(f"{stuck} simulated user(s) still talking at the end of the run")
            if not emulator.wait_idle(timeout=latency + SETTLE_AFTER):
                odd.append(f"{emulator.live_sessions()} request(s) still running at the end")
            time.sleep(0.5)
            watch.stop()  # before the emulator stops the plugin: VmHWM dies with it
            wall = time.monotonic() - began
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            busy1 = _machine_busy_seconds()
            machine_busy = busy1 - busy0 if busy0 is not None and busy1 is not None else None
            bench_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            calls = emulator.app_calls
            requests = Counter(str(s["path"]) for s in emulator.sessions)
            served = emulator.storage_calls
            storage_calls = len(served)
            by_kind = Counter(f"{storage_kind(str(c['key']))} {c['opt']}" for c in served)
            late_storage = sum(1 for c in emulator.late_calls if c["type"] == "storage")
            for msg in messages:
                judge(msg, calls, api)
            questions = {m.question for m in messages}
            strays = Counter(str(c["query"]) for c in calls if c["query"] not in questions)
            odd.extend(
                f"{n} app call(s) with query {q!r} (not a question)" for q, n in strays.items()
            )
            odd.extend(f"emulator error: {e}" for e in emulator.errors[:10])
            if emulator.late_calls:
                kinds = Counter(str(c["type"]) for c in emulator.late_calls)
                odd.append(f"backwards calls after their session closed: {dict(kinds)}")
            logs = emulator.plugin_logs()
            odd.extend(log_findings(logs))
            if plugin_log is not None:
                plugin_log.write_text(logs, encoding="utf-8")
                odd.append(f"plugin log written to {plugin_log}")
    return Outcome(
        messages,
        watch,
        wall,
        send_span,
        bench_cpu,
        machine_busy,
        requests,
        storage_calls,
        by_kind,
        late_storage,
        load_before,
        odd,
    )


def storage_kind(key: str) -> str:
    """The record kind of a storage key ``wx/<endpoint>/<kind>/<id>`` (else its head)."""
    parts = key.split("/")
    if len(parts) >= 4 and parts[0] == "wx":
        return parts[2]
    return parts[0] or "?"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(out: Outcome, args: argparse.Namespace, limit: int | None) -> list[str]:
    msgs = out.messages
    n = len(msgs)
    delivered = sum(1 for m in msgs if m.copies > 0)
    dups = sum(max(0, m.copies - 1) for m in msgs)
    gaps = [m.gap for m in msgs if m.gap is not None]
    starts = [m.calls[0]["started"] - m.started for m in msgs if m.calls]
    per_msg = Counter(len(m.calls) for m in msgs)
    via = Counter(m.via for m in msgs)
    fetches = sum(m.fetches for m in msgs)
    failed = sum(1 for m in msgs if m.wechat_failed)
    slowest = max(
        (s.response_time for m in msgs for s in m.seen if s.response_time is not None),
        default=None,
    )
    procs = list(out.memory.procs.values())
    peak = max((p.peak_kib for p in procs), default=0) * 1024
    plugin_cpu = sum(p.cpu or 0.0 for p in procs)
    within = limit is None or peak < limit
    via_text = ", ".join(f"{k} {v}" for k, v in sorted(via.items()))
    if fetches:
        via_text += f" ({fetches} keyword messages)"
    lines = [
        f"# {machine()}",
        f"# {n} users, one message each, sent within {out.send_span:.2f} s; app latency "
        f"{args.latency:g} s; mode {args.mode}; {args.processes} plugin process(es); "
        f"WeChat timing ×1; emulator relay poll {args.relay_poll:g} s, app stream pings every "
        f"{args.ping:g} s; run took {out.wall:.0f} s"
        + (f"; plugin env {args.plugin_env}" if args.plugin_env else ""),
        "",
        "| metric | value | target |",
        "|---|---|---|",
        f"| answers delivered | {delivered}/{n} ({100 * delivered / max(1, n):.1f} %) "
        f"| 100 %: {verdict(delivered == n)} |",
        f"| duplicates | {dups} | 0: {verdict(dups == 0)} |",
        f"| app finish → user, p50 | {fmt(percentile(gaps, 50))} s | |",
        f"| app finish → user, p95 | {fmt(percentile(gaps, 95))} s | |",
        f"| app finish → user, max | {fmt(max(gaps) if gaps else None)} s | |",
        "| app invocations per message | "
        + ", ".join(f"{k}: {v} msgs" for k, v in sorted(per_msg.items()))
        + f" | 1: {verdict(set(per_msg) == {1})} |",
        f"| message sent → app call started, p50 / p95 | {fmt(percentile(starts, 50))} / "
        f"{fmt(percentile(starts, 95))} s | |",
        f"| answered via | {via_text} | |",
        f"| WeChat showed its failure text | {failed} | 0 |",
        f"| slowest reply to WeChat | {fmt(slowest)} s | < 5 s |",
        f"| peak RSS of a plugin process | {peak / MIB:.1f} MiB | "
        + (
            f"< {limit / MIB:.0f} MiB (manifest): {verdict(within)} |"
            if limit
            else "(no limit in manifest) |"
        ),
        f"| plugin CPU | {plugin_cpu:.1f} s ({100 * plugin_cpu / out.wall:.0f} % of a core), "
        f"{1000 * plugin_cpu / max(1, n):.0f} ms per message | |",
        "| plugin work | "
        + ", ".join(f"{v} × {k}" for k, v in sorted(out.requests.items()))
        + f" requests; {out.storage_calls} storage calls "
        f"({out.storage_calls / max(1, n):.1f} per message) | |",
        "| storage calls per message, by record kind and operation | "
        + ", ".join(f"{k} {v / max(1, n):.2f}" for k, v in sorted(out.storage_by_kind.items()))
        + (
            f"; {out.late_storage_calls} refused (session already ended)"
            if out.late_storage_calls
            else ""
        )
        + " | |",
        f"| bench process CPU (emulator, simulator, users) | {out.bench_cpu:.1f} s "
        f"({100 * out.bench_cpu / out.wall:.0f} % of a core); "
        f"{out.memory.peak_threads} threads at most | |",
        "| other processes on the machine (CPU, average) | "
        + (
            f"{max(0.0, out.machine_busy - plugin_cpu - out.bench_cpu) / out.wall:.2f} cores "
            f"(load average before the run {out.load_before:.2f}) | |"
            if out.machine_busy is not None
            else "– | |"
        ),
        "| busiest second, CPU in cores: plugin / bench process | {:.2f} / {:.2f} | |".format(
            *out.memory.busiest_second()
        ),
        "| CPU per second from the start, cores: plugin / bench process | "
        + " ".join(f"{p:.1f}/{b:.1f}" for p, b in out.memory.per_second())
        + " | |",
        "",
        "| process | pid | RSS at start (MiB) | peak RSS (MiB) | VmHWM (MiB) | CPU (s) "
        "| OS threads at most |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in procs:
        lines.append(
            f"| {p.name} | {p.pid} | {p.baseline_kib / 1024:.1f} | {p.peak_rss_kib / 1024:.1f} "
            f"| {p.hwm_kib / 1024:.1f} | {fmt(p.cpu, 1)} | {p.peak_threads} |"
        )
    if len(procs) > 1:
        total = out.memory.peak_total_kib / 1024
        lines.append(f"\nPeak RSS of all plugin processes together: {total:.1f} MiB.")
    cores = os.cpu_count() or 1
    busiest = sum(out.memory.busiest_second())
    if busiest > 0.8 * cores:
        lines.append(
            f"\nNote: in the busiest second plugin and bench together used {busiest:.1f} of "
            f"{cores} cores: the machine, not only the plugin, limited this run."
        )
    details = anomalies(msgs)
    if details:
        lines.append(f"\nMessages that went wrong (first {SHOW_ANOMALIES} lines):")
        lines.extend(details[:SHOW_ANOMALIES])
        wrong = [m for m in msgs if m.copies != 1 or len(m.calls) != 1 or m.wechat_failed]
        lines.append(
            f"({len(wrong)} message(s) with a lost/duplicate answer, ≠1 app call or failure text)"
        )
    if out.odd:
        lines.append("\nOther observations:")
        lines.extend(f"- {o}" for o in out.odd)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200, help="users, one message each")
    parser.add_argument("--latency", type=float, default=8.0, help="app latency (s)")
    parser.add_argument("--mode", choices=MODES, default="auto", help="delivery mode")
    parser.add_argument("--processes", type=int, default=1, help="plugin processes")
    parser.add_argument(
        "--spread", type=float, default=1.0, help="seconds over which the users write"
    )
    parser.add_argument(
        "--relay-poll",
        type=float,
        default=RELAY_POLL,
        help="seconds between the emulator's hang-up checks per open request (its own: 0.02)",
    )
    parser.add_argument(
        "--ping",
        type=float,
        default=PING_INTERVAL,
        help="seconds between pings on an app stream (Dify: 10; the emulator's own: 1)",
    )
    parser.add_argument("--plugin-log", type=Path, help="write the plugin processes' log here")
    parser.add_argument(
        "--plugin-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the plugin processes (experiments), repeatable",
    )
    args = parser.parse_args()
    if args.users < 1 or args.processes < 1:
        parser.error("--users and --processes must be at least 1")
    env: dict[str, str] = {}
    for item in args.plugin_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--plugin-env wants NAME=VALUE, not {item!r}")
        env[name] = value
    outcome = run(
        args.users,
        args.latency,
        args.mode,
        args.processes,
        args.spread,
        args.plugin_log,
        plugin_env=env,
        relay_poll=args.relay_poll,
        ping_interval=args.ping,
    )
    print("\n".join(report(outcome, args, manifest_memory_limit())))


if __name__ == "__main__":
    main()
