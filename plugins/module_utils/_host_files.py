# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Reading, backing up and atomically replacing configuration files on a host.  Private to this collection: no stable API."""

import os
import shutil
import tempfile
import time


def read_text(path):
    """The UTF-8 text of a file, or None when it does not exist.  Raises ValueError for other encodings."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None


def inside(path, directory):
    """Whether ``path`` is ``directory`` or below it, symlinks resolved."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def backup_copy(path, backup_dir):
    """Copy ``path`` into ``backup_dir`` (created 0700) as NAME.<UTC timestamp>, mode 0600; returns the copy's path.

    The copy is never made next to the original: a static pod manifest's
    directory is read by the kubelet, which would run any file left there.
    """
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    os.chmod(backup_dir, 0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = os.path.join(backup_dir, f"{os.path.basename(path)}.{stamp}")
    target, counter = base, 1
    while os.path.exists(target):
        target, counter = f"{base}.{counter}", counter + 1
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out, open(path, "rb") as source:
        shutil.copyfileobj(source, out)
    return target


def write_atomically(path, text, mode):
    """Replace ``path`` with ``text`` through a hidden temporary file in its directory.

    The temporary file has ``mode`` (and the owner of the file it replaces)
    before it holds any byte, and one rename puts it in place: no reader ever
    sees a partial file or looser permissions.  Its name starts with a dot:
    the kubelet ignores hidden files in its static pod directory.
    """
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".teapot-kms-")
    try:
        os.fchmod(descriptor, mode)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            os.fchown(descriptor, current.st_uid, current.st_gid)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
