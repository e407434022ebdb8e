"""Helpers shared by the benches that must not import each other's dependencies.

``machine()`` lives here so that bench/load.py, which only drives the plugin from outside,
does not import the plugin's own modules (as bench/cpu.py must).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """CPU model, core count, RAM, OS and Python: what a reader needs to compare numbers."""
    model = "unknown CPU"
    ram = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores{ram}, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
