"""Process management shared by the local servers: pid files, port checks, start, readiness, stop."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"

_OUTPUT_ROTATE_BYTES = 5 * 1024 * 1024
_TAIL_LINES = 15


class StackError(RuntimeError):
    """A local server could not be started or stopped; the message names the cause and the fix."""


@dataclass(frozen=True)
class ServerStatus:
    """What ``status()`` reports for one server."""

    name: str
    running: bool
    pid: int | None
    address: str

    def line(self) -> str:
        """One human-readable line."""
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"{self.name:<11} {state:<22} {self.address}"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port`` (a socket in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that are free right now (picked by the kernel)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (with the pid, a unique identity); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or an empty string."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedServer(ABC):
    """A server process started in the background, owned through a pid file in its state directory.

    Subclasses give the command line, the ports it must find free, and a one-shot readiness probe.
    ``die_with_parent`` (for test sessions, Linux with ``setpriv``) sends SIGTERM to the server when the
    thread that started it dies, so a killed test run leaves no servers behind.
    """

    name: ClassVar[str]

    def __init__(
        self, state_dir: Path | str, *, start_timeout_s: float = 60.0, stop_timeout_s: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:
        self.home = Path(state_dir).resolve() / self.name
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.die_with_parent = die_with_parent
        self._child: subprocess.Popen[bytes] | None = None

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients connect (a host:port or a URL)."""

    @abstractmethod
    def ports(self) -> dict[str, int]:
        """The ports this server listens on, by role."""

    @abstractmethod
    def _command(self) -> list[str]:
        """Check tools, write config files, prepare data; return the argv that runs the server."""

    @abstractmethod
    def _probe(self) -> bool:
        """One readiness check; True when clients can use the server."""

    @property
    def pid_file(self) -> Path:
        """JSON with pid, start ticks, address and ports of the running process."""
        return self.home / f"{self.name}.pid"

    @property
    def output_file(self) -> Path:
        """stdout and stderr of the process."""
        return self.home / f"{self.name}.out"

    def _read_pid_file(self) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return record

    def pid(self) -> int | None:
        """The pid of the process this stack started, if it is still that process and alive."""
        record = self._read_pid_file()
        if record is None:
            return None
        pid = int(record["pid"])
        if self._child is not None and self._child.pid == pid and self._child.poll() is not None:
            return None
        ticks = _start_ticks(pid)
        if ticks is None or ticks != record.get("start_ticks"):
            return None
        return pid

    def is_running(self) -> bool:
        """True while the process from the pid file is alive."""
        return self.pid() is not None

    def status(self) -> ServerStatus:
        """Running or stopped, with pid and address (as recorded when it was started)."""
        record = self._read_pid_file()
        pid = self.pid()
        address = str(record["address"]) if pid is not None and record else self.address
        return ServerStatus(self.name, pid is not None, pid, address)

    def start(self) -> None:
        """Start the server (unless this stack already runs it) and wait until it is ready."""
        self.launch()
        self.wait_ready()

    def _detachment(self) -> dict[str, Any]:
        """How the child leaves the caller's terminal: a server that outlives its caller gets a session of its own;
        one that dies with it (``die_with_parent``) only a process group of its own, out of reach of a Ctrl-C but in
        the caller's session, so that a kernel with autogroup scheduling does not give it a CPU share apart from the
        processes it serves (docs/operations.md, "Co-located servers and the scheduler")."""
        return {"process_group": 0} if self.die_with_parent else {"start_new_session": True}

    def launch(self) -> None:
        """Start the process in the background (:meth:`_detachment`); do not wait for readiness."""
        record = self._read_pid_file()
        if self.is_running() and record is not None:
            if record.get("address") != self.address:
                raise StackError(
                    f"{self.name} already runs from {self.home} at {record.get('address')} (pid {record['pid']}), "
                    f"not at {self.address}; stop it first (`streamlearn stack down`) or use its ports"
                )
            return
        self._check_ports_free()
        self.home.mkdir(parents=True, exist_ok=True)
        argv = self._command()
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        launch_argv = [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv
        self._rotate_output()
        with self.output_file.open("ab") as output:
            try:
                child = subprocess.Popen(
                    launch_argv, cwd=self.home, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    **self._detachment(),
                )
            except OSError as exc:
                raise StackError(f"{self.name}: cannot run {argv[0]!r}: {exc}") from exc
        self._child = child
        record = {"pid": child.pid, "start_ticks": _start_ticks(child.pid), "address": self.address,
                  "ports": self.ports(), "argv": argv}
        write_atomically(self.pid_file, json.dumps(record, indent=1))

    def wait_ready(self) -> None:
        """Poll the probe until it succeeds; raise StackError if the process exits or time runs out."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not self.is_running():
                code = self._child.poll() if self._child is not None else None
                self.pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{self.name} exited during start (exit code {code}); see {self.output_file}:\n"
                    f"{tail(self.output_file)}"
                )
            if self._probe():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(
                    f"{self.name} was not ready within {self.start_timeout_s:.0f} s and was stopped; "
                    f"see {self.output_file}:\n{tail(self.output_file)}"
                )
            time.sleep(0.2)

    def stop(self, timeout_s: float | None = None) -> bool:
        """SIGTERM, wait, then SIGKILL the process this stack started. Returns whether one was running."""
        return self._terminate(signal.SIGTERM, self.stop_timeout_s if timeout_s is None else timeout_s)

    def kill(self) -> bool:
        """SIGKILL at once (a crash, for fault tests). Returns whether one was running."""
        return self._terminate(signal.SIGKILL, 10.0)

    def _terminate(self, first_signal: signal.Signals, timeout_s: float) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, first_signal)
        if not self._wait_gone(pid, timeout_s) and first_signal != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        self._child = None
        return True

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        if self._child is not None and self._child.pid == pid:
            try:
                self._child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while _start_ticks(pid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _check_ports_free(self) -> None:
        for role, port in self.ports().items():
            if not port_is_free(port):
                raise StackError(
                    f"{self.name}: {role} port {LOOPBACK}:{port} is already in use; stop what listens there "
                    f"(see `ss -ltnp 'sport = :{port}'`) or choose another {role} port"
                )

    def _rotate_output(self) -> None:
        with contextlib.suppress(OSError):
            if self.output_file.stat().st_size > _OUTPUT_ROTATE_BYTES:
                self.output_file.replace(self.output_file.with_suffix(".out.1"))


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def start_all(servers: Sequence[ManagedServer]) -> list[ManagedServer]:
    """Launch the servers, then wait for all of them; on any failure stop the ones launched here.

    Servers already running are kept as they are. Returns the servers this call launched.
    """
    launched: list[ManagedServer] = []
    try:
        for server in servers:
            was_running = server.is_running()
            server.launch()
            if not was_running:
                launched.append(server)
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in launched:
            server.stop()
        raise
    return launched
