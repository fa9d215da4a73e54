"""The JSON record of one run, and telling the processes it names from reused PIDs."""

import contextlib
import json
import os
import pathlib


class State:
    """The JSON record of one run: written before each resource is created."""

    def __init__(self, path, data=None):
        self.path = pathlib.Path(path)
        self.data = data if data is not None else {}

    @property
    def copy_path(self):
        """A copy inside the run directory, so that ``prune`` finds runs whose state file was lost."""
        run_dir = self.data.get("run_dir")
        return pathlib.Path(run_dir) / "state.json" if run_dir else None

    @classmethod
    def load(cls, path):
        path = pathlib.Path(path)
        if not path.exists():
            return None
        return cls(path, json.loads(path.read_text(encoding="utf-8")))

    def save(self):
        for path in (self.path, self.copy_path):
            if path is None or (path != self.path and not path.parent.is_dir()):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)

    def processes_alive(self):
        return any(alive(record) for record in self.data.get("hosts", []) + self.data.get("servers", []))


def process_start_time(pid):
    """The kernel's start time of ``pid`` (to tell it from a reused PID), or None."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(record):
    """True while the process that ``record`` describes is still the same, unfinished process."""
    pid = record.get("pid")
    if not pid or process_start_time(pid) != record.get("start_time"):
        return False
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        # Finished: reap it if it is our child (when down runs in the process that ran up).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True
