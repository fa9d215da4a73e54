"""Make this checkout importable as ``ansible_collections.teapot.kms`` in the test process."""

import contextlib
import hashlib
import sys

from tests.harness.cache import cache_dir
from tests.harness.playbook import REPO


def make_importable():
    """Link this checkout into a per-checkout collections root and put that root on ``sys.path``.

    Per checkout, so that two checkouts sharing one cache never import each other's tree.
    """
    root = cache_dir("unit-collections", hashlib.sha256(str(REPO).encode()).hexdigest()[:12])
    link = root / "ansible_collections" / "teapot" / "kms"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        with contextlib.suppress(FileExistsError):  # another pytest worker linked it first
            link.symlink_to(REPO)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
