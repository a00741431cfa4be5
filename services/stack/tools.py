"""The external programs the local stack runs: checks, and installation of the Debian packages."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

from services.stack.process import StackError

APT_PACKAGES = {"redis-server": "redis-server", "prometheus": "prometheus", "promtool": "prometheus",
                "chromium": "chromium"}
#: what the local stack runs; chromium only runs the dashboard's browser test, so ``stack up`` does not need it
STACK_PROGRAMS = ("redis-server", "prometheus", "promtool")
MIN_JAVA = 17


def require_executable(program: str, fix: str) -> str:
    """The full path of ``program`` on PATH, or StackError naming ``fix``."""
    path = shutil.which(program)
    if path is None:
        raise StackError(f"`{program}` is not on PATH; {fix}")
    return path


@functools.lru_cache(maxsize=8)
def _java_major(java: str) -> int | None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java() -> str:
    """The path of a Java 17+ ``java``; StackError naming the fix otherwise."""
    fix = "Kafka 4.x needs Java 17 or newer: `apt-get install -y openjdk-17-jre-headless`"
    java = require_executable("java", fix)
    major = _java_major(java)
    if major is None or major < MIN_JAVA:
        raise StackError(f"`{java}` is Java {major or 'of unknown version'}; {fix}")
    return java


def require_maven() -> str:
    """The path of ``mvn``; StackError naming the fix otherwise."""
    return require_executable("mvn", "it resolves the Kafka broker jars: `apt-get install -y maven`")


def ensure_installed(programs: Iterable[str] = STACK_PROGRAMS) -> None:
    """Install the Debian packages that provide any missing ``programs`` (redis-server, prometheus, promtool;
    chromium for the dashboard's browser test).

    Runs ``apt-get install -y`` (after ``apt-get update`` when the first try fails). Needs root; otherwise,
    or when apt fails, raises StackError with the command to run by hand.
    """
    unknown = set(programs) - set(APT_PACKAGES)
    if unknown:
        raise ValueError(f"no package known for {sorted(unknown)}")
    missing = sorted({APT_PACKAGES[p] for p in programs if shutil.which(p) is None})
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    fix = f"install them with `sudo apt-get update && sudo {' '.join(command)}`"
    if shutil.which("apt-get") is None:
        raise StackError(f"missing {', '.join(missing)} and there is no apt-get; install them with the package manager")
    if os.geteuid() != 0:
        raise StackError(f"missing {', '.join(missing)} and not running as root; {fix}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if _run_apt(command, env) != 0:
        _run_apt(["apt-get", "update"], env)
        if _run_apt(command, env) != 0:
            raise StackError(f"`{' '.join(command)}` failed (see its output above); {fix}")
    still_missing = [p for p in programs if shutil.which(p) is None]
    if still_missing:
        raise StackError(f"{', '.join(still_missing)} still missing after apt-get install; {fix}")


def _run_apt(command: list[str], env: dict[str, str]) -> int:
    try:
        return subprocess.run(command, env=env, check=False, timeout=900).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"`{' '.join(command)}` could not run: {exc}") from exc
