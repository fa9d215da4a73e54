"""The cached Debian rootfs that every test host boots from (built once with debootstrap)."""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

from tests.harness.cache import cache_dir, file_lock
from tests.harness.testhosts import TestHostError
from tests.harness.testhosts.apt_sources import SUITE, debian_mirror

ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "openssh-server",
    "iproute2",
    "sudo",
    "procps",
    "ca-certificates",
)


def rootfs_key(packages=ROOTFS_PACKAGES, suite=SUITE):
    digest = hashlib.sha256(json.dumps([suite, sorted(packages)]).encode()).hexdigest()
    return f"{suite}-{digest[:12]}"


def build_rootfs(packages=ROOTFS_PACKAGES, suite=SUITE, log=None):
    """Return the cached rootfs for ``packages``, building it first if needed.

    A lock keeps two runs from building the same rootfs at once; the build
    happens in a temporary directory that is renamed into place when it is
    complete, so a directory under its final name is always whole.
    """
    base = cache_dir("rootfs")
    key = rootfs_key(packages, suite)
    final = base / key
    if final.is_dir():
        return final
    with file_lock(base / f"{key}.lock"):
        if final.is_dir():
            return final
        for stale in base.glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=base))
        try:
            mirror = debian_mirror(suite)
            argv = [
                "debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}",
                suite, tmp, mirror,
            ]
            with open(log or os.devnull, "a", encoding="utf-8") as out:
                result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                raise TestHostError(f"debootstrap failed with {result.returncode}; see {log}")
            os.chmod(tmp, 0o755)  # mkdtemp made it 0700: it becomes the hosts' /
            _prepare_rootfs(tmp)
            (tmp / ".teapot-kms-rootfs.json").write_text(
                json.dumps({"suite": suite, "packages": sorted(packages), "mirror": mirror}) + "\n",
                encoding="utf-8",
            )
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _prepare_rootfs(root):
    """Make the debootstrapped tree a neutral template for many hosts."""
    # Each host gets its own SSH host keys and machine id.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("", encoding="utf-8")
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    # No console to log in on, and no hardware clock to sync.
    wants = root / "etc" / "systemd" / "system"
    for unit in ("getty@tty1.service", "console-getty.service", "systemd-timesyncd.service"):
        with contextlib.suppress(FileExistsError):
            (wants / unit).symlink_to("/dev/null")
