"""Where the harness keeps venvs, the test-host rootfs, wheels and .deb files.

One directory, named by ``TEAPOT_KMS_CACHE`` (default ``~/.cache/teapot-kms``),
so that a developer's second run reuses what the first one built.
"""

import contextlib
import fcntl
import os
import pathlib


def cache_root():
    """The harness cache directory (not created)."""
    return pathlib.Path(os.environ.get("TEAPOT_KMS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "teapot-kms"))


def cache_dir(*parts):
    """Return (and create) a directory below the harness cache."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive flock on ``path`` (created if missing), so that two
    test runs never build the same cached thing at once."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
