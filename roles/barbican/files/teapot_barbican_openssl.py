# Copyright: teapot.kms contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Empties OpenSSL's error queue of the thread that loads Barbican's WSGI application.

uWSGI's TLS setup (``https =``) reads Diffie-Hellman parameters from the
certificate file; a certificate file without them leaves "PEM routines::no
start line" in the error queue of uWSGI's main thread, and every worker forked
from it inherits that entry in its own main thread.  Python's ``ssl`` module
does not empty the queue before it reads from a TLS socket (CPython issues
81891 and 148594), so the first read there that must wait for the peer (an
``SSLWantReadError`` inside the socket's timeout loop) is reported instead as
that stale PEM error.  For Barbican this meant an occasional 500 on a payload
read when its secret store (castellan's Vault client, which does not retry)
talked TLS from a worker's main thread.  Emptying the queue where the
application is loaded, before uWSGI forks its workers, removes the inherited
entry.
"""

import ctypes
import ctypes.util
# Imported for its side effect: it maps the libcrypto that Python's ssl module uses.
import ssl  # noqa: F401  # pylint: disable=unused-import


def _loaded_libcrypto():
    """The path of the libcrypto mapped into this process (the one ``ssl`` uses), or a name the loader knows."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libcrypto.so" in path:
                    return path
    except OSError:
        pass
    return ctypes.util.find_library("crypto")


def clear_error_queue():
    """Empty the calling thread's OpenSSL error queue; return whether a libcrypto was found to do it."""
    path = _loaded_libcrypto()
    if not path:
        return False
    ctypes.CDLL(path).ERR_clear_error()
    return True
