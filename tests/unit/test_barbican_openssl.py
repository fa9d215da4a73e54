"""The barbican role's WSGI fix for the OpenSSL error queue that uWSGI leaves behind
(roles/barbican/files/teapot_barbican_openssl.py), on this machine's Python and libcrypto.

uWSGI reads Diffie-Hellman parameters from its TLS certificate file, which
leaves "PEM routines::no start line" in the queue of its main thread; Python's
ssl module then reports that entry instead of "want read" on a TLS read that
must wait for the peer.  Both halves are reproduced here with the same
libcrypto calls, then the fix is shown to restore the right answer.
"""

import ctypes
import importlib.util
import pathlib
import ssl

import pytest

from tests.harness.pki import TestCA

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = ROOT / "roles" / "barbican" / "files"


def _module():
    spec = importlib.util.spec_from_file_location("teapot_barbican_openssl", FILES / "teapot_barbican_openssl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="libcrypto")
def fixture_libcrypto():
    path = _module()._loaded_libcrypto()  # pylint: disable=protected-access
    assert path, "no libcrypto found in this process after importing ssl"
    lib = ctypes.CDLL(path)
    lib.ERR_peek_error.restype = ctypes.c_ulong
    lib.BIO_new_mem_buf.restype = ctypes.c_void_p
    lib.BIO_new_mem_buf.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.PEM_read_bio_DHparams.restype = ctypes.c_void_p
    lib.PEM_read_bio_DHparams.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.BIO_free.argtypes = [ctypes.c_void_p]
    lib.ERR_clear_error()
    yield lib
    lib.ERR_clear_error()


@pytest.fixture(name="tls_files")
def fixture_tls_files(tmp_path):
    """A server certificate and key for localhost, and the CA that signed it."""
    ca = TestCA(tmp_path / "pki")
    cert_path, key_path = ca.issue("server", "localhost", dns_names=["localhost"], server=True)
    return cert_path, key_path, ca.cert_path


def _leave_uwsgi_entry(libcrypto, cert_path):
    """What uWSGI's TLS setup does with its certificate file: look for DH parameters that are not there."""
    data = cert_path.read_bytes()
    bio = libcrypto.BIO_new_mem_buf(data, len(data))
    assert libcrypto.PEM_read_bio_DHparams(bio, None, None, None) is None
    libcrypto.BIO_free(bio)


def _handshaken_client(tls_files):
    """A TLS 1.3 client and server over memory BIOs, handshake done: the client's next read has to wait."""
    cert_path, key_path, ca_path = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(ca_path)
    pipes = [ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()]
    client = client_context.wrap_bio(pipes[0], pipes[1], server_hostname="localhost")
    server = server_context.wrap_bio(pipes[2], pipes[3], server_side=True)
    done = {"client": False, "server": False}
    for _round in range(10):
        for role, end in (("client", client), ("server", server)):
            if not done[role]:
                try:
                    end.do_handshake()
                    done[role] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[2].write(pipes[1].read())
        pipes[0].write(pipes[3].read())
        if all(done.values()):
            break
    assert all(done.values())
    # Drain what the server sent after its handshake (session tickets).
    with pytest.raises(ssl.SSLWantReadError):
        client.read(1)
    return client


def test_the_uwsgi_entry_is_what_the_fix_removes(libcrypto, tls_files):
    _leave_uwsgi_entry(libcrypto, tls_files[0])
    assert libcrypto.ERR_peek_error() != 0
    assert _module().clear_error_queue() is True
    assert libcrypto.ERR_peek_error() == 0


def test_a_read_that_must_wait_says_so_once_the_queue_is_empty(libcrypto, tls_files):
    client = _handshaken_client(tls_files)
    _leave_uwsgi_entry(libcrypto, tls_files[0])
    stale_answer = "no exception"
    try:
        client.read(1)
    except ssl.SSLWantReadError:
        stale_answer = "want read"
    except ssl.SSLError as error:
        stale_answer = str(error)
    # This Python reports the stale entry instead of "want read" (CPython issues 81891, 148594); a Python that
    # empties the queue itself answers "want read" here, and the fix is then harmless.
    assert stale_answer == "want read" or "no start line" in stale_answer, stale_answer
    _leave_uwsgi_entry(libcrypto, tls_files[0])
    _module().clear_error_queue()
    with pytest.raises(ssl.SSLWantReadError):
        client.read(1)
