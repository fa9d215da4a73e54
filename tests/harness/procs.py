"""Start, watch and stop the harness's own processes, and run its commands.

Only processes started here are ever signalled: each one runs in its own
process group, and stop() signals that group and nothing else.  Output goes
to a log file that failures print, so a broken service explains itself.
``run()`` is the one way the harness runs a command to completion.
"""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import time


class CommandError(RuntimeError):
    """A command that ``run()`` ran exited with a non-zero status."""


def run(argv, log=None, **kwargs):
    """Run ``argv`` to completion and return its standard output.

    Its standard error is copied to ``log`` (an open text file) when one is
    given.  A non-zero exit raises CommandError with the command line and the
    end of both outputs, so the failure explains itself where it is reported.
    """
    argv = [str(arg) for arg in argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if log is not None and result.stderr:
        print(result.stderr.rstrip(), file=log)
    if result.returncode != 0:
        raise CommandError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def free_port(host="127.0.0.1"):
    """Return a TCP port that is free on ``host`` right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host, port, timeout=60.0, process=None):
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode} before "
                f"listening on {host}:{port}; log:\n{process.log_tail()}"
            )
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s\n{tail}")


class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = pathlib.Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # pylint: disable-next=consider-using-with
        log = open(self.log_path, "ab")
        try:
            # pylint: disable-next=consider-using-with
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines=60):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum):
        """Send ``signum`` to this process group (only ours)."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout=20.0):
        """SIGTERM the group, then SIGKILL it if it has not gone in time."""
        if self.popen is None:
            return
        if self.running():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        # Reap anything the group left behind (uWSGI workers, for instance).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ProcessBacked:
    """stop(), running() and log_tail() of a service whose process (a ManagedProcess) is ``self.process``."""

    process = None

    def stop(self):
        if self.process is not None:
            self.process.stop()

    def running(self):
        return self.process is not None and self.process.running()

    def log_tail(self, lines=60):
        return self.process.log_tail(lines) if self.process is not None else ""
