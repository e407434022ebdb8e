"""Background work and side-by-side storage calls (greenlets once the SDK has
monkey-patched the process)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_background(target: Callable[[], None]) -> None:
    # A greenlet once the SDK has monkey-patched threading; it only lives as long as the
    # request that started it may use the Dify session (see STORE_GUARD).
    threading.Thread(target=target, daemon=True).start()


def run_side_by_side(tasks: list[Callable[[], None]]) -> None:
    """Run independent storage writes concurrently and wait for all of them."""
    if len(tasks) == 1:
        tasks[0]()
        return
    errors: list[BaseException] = []

    def guarded(task: Callable[[], None]) -> None:
        try:
            task()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(task,), daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
