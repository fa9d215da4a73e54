"""Test fixture: record every distinct command line seen on this host.

Reads /proc/*/cmdline every INTERVAL seconds and appends each command line
not seen before to OUT (JSON lines, root only), as {"source": "cmdline",
"argv": [...]}.  A process alive for LONG_LIVED seconds or more also has its
environment recorded once per distinct content, as {"source": "environ",
"argv": [...], "env": [...]}.  Runs until it is stopped (SIGTERM).

Usage: sampler.py OUT [INTERVAL] [LONG_LIVED]
"""

import hashlib
import json
import os
import sys
import time


def read_proc(pid, name):
    try:
        with open("/proc/%s/%s" % (pid, name), "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def split_nul(raw):
    return [part.decode("utf-8", "backslashreplace") for part in raw.rstrip(b"\0").split(b"\0")]


def main():
    out = sys.argv[1]
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
    long_lived = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    os.umask(0o077)
    seen = set()
    first_seen = {}  # (pid, cmdline) -> monotonic time it was first seen
    environ_done = set()
    with open(out, "a", encoding="utf-8") as sink:
        os.chmod(out, 0o600)
        while True:
            now = time.monotonic()
            alive = set()
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                raw = read_proc(pid, "cmdline")
                if not raw:
                    continue  # a kernel thread, or gone
                key = (pid, raw)
                alive.add(key)
                digest = hashlib.sha256(raw).digest()
                if digest not in seen:
                    seen.add(digest)
                    sink.write(json.dumps({"source": "cmdline", "argv": split_nul(raw)}) + "\n")
                    sink.flush()
                started = first_seen.setdefault(key, now)
                if now - started >= long_lived and key not in environ_done:
                    environ_done.add(key)
                    env = read_proc(pid, "environ")
                    env_digest = hashlib.sha256(b"environ\0" + env).digest()
                    if env and env_digest not in seen:
                        seen.add(env_digest)
                        sink.write(json.dumps({"source": "environ", "argv": split_nul(raw), "env": split_nul(env)}) + "\n")
                        sink.flush()
            for key in list(first_seen):
                if key not in alive:
                    del first_seen[key]
                    environ_done.discard(key)
            time.sleep(interval)


if __name__ == "__main__":
    main()
