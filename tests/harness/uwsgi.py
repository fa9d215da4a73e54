"""uWSGI command lines shared by the Keystone and Barbican services."""

import time

import requests


def uwsgi_argv(venv, port, app_args, processes=1, threads=4, extra=(), tls=None):
    """argv for the venv's uWSGI serving one WSGI app over HTTP/1.1 on loopback.

    ``tls``, a ``(certificate, key)`` pair of paths, makes the router serve
    HTTPS only (``--https``) as the roles configure it: one request per
    connection, with ``Connection: close`` (its keep-alive over TLS sometimes
    closes a connection that the client then reuses).

    The HTTP router (``--http`` with ``--http-keepalive``) holds idle
    keep-alive connections in its event loop.  Serving HTTP from the workers
    directly (``http11-socket``) pins one worker thread per idle keep-alive
    client until ``socket-timeout``, so a handful of clients that keep their
    sessions open stall every other client.  ``die-on-term`` makes SIGTERM a
    shutdown rather than uWSGI's default reload.
    """
    return [
        str(venv / "bin" / "uwsgi"),
        "--master",
        "--die-on-term",
        "--need-app",
        "--strict",
        "--virtualenv", str(venv),
        *(["--https", f"127.0.0.1:{port},{tls[0]},{tls[1]}", "--add-header", "Connection: close"] if tls
          else ["--http", f"127.0.0.1:{port}", "--http-keepalive", "--http-auto-chunked"]),
        "--http-timeout", "120",
        "--processes", str(processes),
        "--threads", str(threads),
        "--enable-threads",
        "--buffer-size", "65535",
        "--socket-timeout", "30",
        "--disable-logging",
        "--log-4xx",
        "--log-5xx",
        *app_args,
        *extra,
    ]


def wait_for_http(url, timeout=120.0, process=None, verify=True):
    """Wait until ``url`` answers with a status below 500 (``verify``: requests' CA bundle or path).

    uWSGI's HTTP router accepts connections before the application has
    loaded; only an answer from the application means the service is up.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.running():
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode} before serving {url}; log:\n{process.log_tail()}")
        try:
            response = requests.get(url, timeout=5, verify=verify)
            if response.status_code < 500:
                return response
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last: {last})\n{tail}")
