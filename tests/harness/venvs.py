"""Python virtualenvs for the services the integration tests run.

Each venv lives below ``cache_dir("venvs")`` in a directory named after a
hash of its pinned requirement list, so changing a pin builds a fresh venv
and an unchanged list reuses the one already built.  A file lock keeps two
pytest workers from building the same venv at once; a marker written last
tells a finished venv from one whose build was interrupted.
"""

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

from tests.harness.cache import cache_dir, file_lock

REQUIREMENTS = {
    "keystone": (
        "keystone==30.0.0",
        "uWSGI==2.0.31",
    ),
    "barbican": (
        "barbican==23.0.0",
        "uWSGI==2.0.31",
        "PyMySQL==1.2.4",
        "psycopg[binary]==3.3.9",
    ),
}

_MARKER = ".teapot-complete"


def _key(requirements):
    text = "\n".join(sorted(requirements)) + "\n" + sys.version.split()[0]
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_path(name):
    """Where the venv called ``name`` lives (built or not)."""
    return cache_dir("venvs") / f"{name}-{_key(REQUIREMENTS[name])}"


def ensure_venv(name):
    """Build the venv called ``name`` unless it is already complete; return its path."""
    path = venv_path(name)
    if (path / _MARKER).exists():
        return path
    with file_lock(f"{path}.lock"):
        if (path / _MARKER).exists():
            return path
        if path.exists():
            shutil.rmtree(path)
        log_path = pathlib.Path(f"{path}.build.log")
        with open(log_path, "wb") as log:
            for argv in (
                [sys.executable, "-m", "venv", str(path)],
                [str(path / "bin" / "pip"), "install", "--quiet", "--upgrade", "pip"],
                [str(path / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS[name]],
            ):
                result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False, env=_build_env())
                if result.returncode != 0:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                    raise RuntimeError(f"building the {name} venv failed ({' '.join(argv[:3])} ...); see {log_path}:\n{tail}")
        (path / _MARKER).write_text("\n".join(REQUIREMENTS[name]) + "\n", encoding="utf-8")
    return path


def _build_env():
    env = dict(os.environ)
    # Let pip reuse a wheel it built once (uWSGI compiles from source).
    env.setdefault("PIP_CACHE_DIR", str(cache_dir("pip")))
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_venvs(*names):
    """Build several venvs at the same time; return {name: path}."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = {name: pool.submit(ensure_venv, name) for name in names}
        return {name: future.result() for name, future in futures.items()}


if __name__ == "__main__":
    for venv_name, venv_dir in ensure_venvs(*(sys.argv[1:] or REQUIREMENTS)).items():
        print(venv_name, venv_dir)
