"""Package sources for hosts without internet: a flat Debian repository and a PEP 503 wheel index.

``prepare()`` builds both from the caller's lists (cached: the same list for
the same rootfs is built once), and ``serve()`` starts an HTTP server bound
only to the test bridge's host-side address.  ``build()`` (the command line,
``python3 -m tests.harness.pkgrepo``) builds the same for a site's own hosts,
resolved against a copy of their dpkg status.  Hosts then use::

    deb [trusted=yes] http://ADDRESS:PORT/debian ./
    pip index-url http://ADDRESS:PORT/pypi/simple/

The .deb files are resolved by apt on the controller against exactly the
host rootfs's dpkg status, so every dependency the rootfs lacks comes along.
"""

import argparse
import contextlib
import gzip
import hashlib
import html
import json
import os
import pathlib
import re
import shutil
import sys

from tests.harness.cache import cache_dir, file_lock
from tests.harness.procs import CommandError, ManagedProcess, free_port, run, wait_for_port
from tests.harness.testhosts import TestHostError
from tests.harness.testhosts.apt_sources import SUITE, debian_mirror
from tests.harness.testhosts.state_file import process_start_time

HOST_PYTHON = "3.11"
HOST_MACHINE = "x86_64"
HOST_GLIBC_MINOR = 36  # Debian 12
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _digest(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Debian repository


def _apt_options(rootfs, apt_dir, archives):
    """apt-get options that resolve against the rootfs's dpkg status, with private state."""
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    for sub in ("lists/partial", "parts", "prefs"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    sources = apt_dir / "sources.list"
    sources.write_text(
        f"deb [signed-by={DEBIAN_KEYRING}] {debian_mirror(SUITE)} {SUITE} main\n", encoding="utf-8"
    )
    options = {
        "Dir::State": apt_dir,
        "Dir::State::Lists": apt_dir / "lists",
        "Dir::State::status": pathlib.Path(rootfs) / "var/lib/dpkg/status",
        "Dir::Cache": apt_dir,
        "Dir::Cache::archives": archives,
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": apt_dir / "parts",
        "Dir::Etc::Preferences": apt_dir / "prefs" / "none",
        "Dir::Etc::PreferencesParts": apt_dir / "prefs",
        "Debug::NoLocking": "true",
        "APT::Sandbox::User": "root",
        "APT::Get::Assume-Yes": "true",
    }
    argv = []
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return argv


def _write_flat_repo_indexes(repo):
    packages = run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=repo)
    (repo / "Packages").write_text(packages, encoding="utf-8")
    with gzip.GzipFile(repo / "Packages.gz", "wb", mtime=0) as handle:
        handle.write(packages.encode())
    fields = {
        "Origin": "teapot.kms test repository",
        "Label": "teapot.kms",
        "Suite": SUITE,
        "Architectures": "amd64 all",
    }
    options = []
    for field, value in fields.items():
        options += ["-o", f"APT::FTPArchive::Release::{field}={value}"]
    # Captured, then written: apt-ftparchive would list a Release file that already exists.
    release = run(["apt-ftparchive", *options, "release", "."], cwd=repo)
    (repo / "Release").write_text(release, encoding="utf-8")


def debian_repository(rootfs, packages, log=sys.stderr):
    """A flat repository holding ``packages`` and whatever they need beyond ``rootfs``."""
    packages = sorted(set(packages))
    base = cache_dir("debs")
    repo = base / f"repo-{_digest(pathlib.Path(rootfs).name, packages)}"
    if (repo / "Release").is_file():
        return repo
    with file_lock(base / "apt.lock"):
        if (repo / "Release").is_file():
            return repo
        staging = repo.with_name(repo.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        print(f"testhosts: building the Debian repository {repo.name} ({len(packages)} packages and what they need; "
              "once per package list)", file=log, flush=True)
        if packages:
            # Download into the empty staging directory: exactly the packages this set needs.
            options = _apt_options(rootfs, base / "apt", staging)
            run(["apt-get", *options, "update"], log)
            run(["apt-get", *options, "--download-only", "install", *packages], log)
            shutil.rmtree(staging / "partial", ignore_errors=True)
            (staging / "lock").unlink(missing_ok=True)
            if not any(staging.glob("*.deb")):
                raise TestHostError(f"apt downloaded nothing for {packages}: are they all in the rootfs already?")
        _write_flat_repo_indexes(staging)
        os.rename(staging, repo)
    return repo


# --------------------------------------------------------------------------
# Wheel index


def _host_platform_options():
    options = ["--python-version", HOST_PYTHON, "--implementation", "cp", "--abi", f"cp{HOST_PYTHON.replace('.', '')}",
               "--abi", "abi3", "--abi", "none"]
    platforms = [f"manylinux_2_{minor}_{HOST_MACHINE}" for minor in range(HOST_GLIBC_MINOR, 4, -1)]
    platforms += [f"manylinux2014_{HOST_MACHINE}", f"manylinux2010_{HOST_MACHINE}", f"manylinux1_{HOST_MACHINE}",
                  f"linux_{HOST_MACHINE}"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def normalize(name):
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _write_simple_index(index_dir, files_dir):
    simple = index_dir / "simple"
    projects = {}
    for wheel in sorted(files_dir.glob("*.whl")):
        projects.setdefault(normalize(wheel.name.split("-", 1)[0]), []).append(wheel)
    simple.mkdir(parents=True, exist_ok=True)
    head = '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0"><title>{}</title></head><body>\n'
    links = [f'<a href="{name}/">{name}</a><br>' for name in sorted(projects)]
    (simple / "index.html").write_text(head.format("Simple index") + "\n".join(links) + "\n</body></html>\n", encoding="utf-8")
    for name, wheels in projects.items():
        page = simple / name
        page.mkdir(exist_ok=True)
        links = [
            f'<a href="../../files/{html.escape(wheel.name)}#sha256={_sha256_file(wheel)}">{html.escape(wheel.name)}</a><br>'
            for wheel in wheels
        ]
        (page / "index.html").write_text(head.format(f"Links for {name}") + "\n".join(links) + "\n</body></html>\n", encoding="utf-8")


def wheel_index(wheels=(), build_wheels=(), log=sys.stderr):
    """A PEP 503 index of ``wheels`` (downloaded for the hosts) and ``build_wheels`` (built here)."""
    wheels, build_wheels = sorted(set(wheels)), sorted(set(build_wheels))
    base = cache_dir("wheels")
    index = base / f"index-{_digest(HOST_PYTHON, wheels, build_wheels)}"
    if (index / "simple" / "index.html").is_file():
        return index
    with file_lock(base / f"{index.name}.lock"):
        if (index / "simple" / "index.html").is_file():
            return index
        staging = index.with_name(index.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        files = staging / "files"
        files.mkdir(parents=True)
        print(f"testhosts: building the wheel index {index.name} ({len(wheels) + len(build_wheels)} requirements and their "
              "dependencies; once per list)", file=log, flush=True)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
        if wheels:
            run([*pip, "download", "--only-binary=:all:", *_host_platform_options(), "--dest", files, *wheels], log)
        if build_wheels:
            # Built with this interpreter: the controller runs the hosts' Python and glibc.
            run([*pip, "wheel", "--wheel-dir", files, *build_wheels], log)
        non_wheels = [path.name for path in files.iterdir() if path.suffix != ".whl"]
        if non_wheels:
            raise TestHostError(f"pip left files that are not wheels in {files}: {non_wheels}")
        _write_simple_index(staging, files)
        os.rename(staging, index)
    return index


# --------------------------------------------------------------------------
# Serving


def prepare(rootfs, debs=(), wheels=(), build_wheels=(), log=sys.stderr):
    """Build (or reuse) both sources; return their directories."""
    return {
        "debian": str(debian_repository(rootfs, debs, log=log)),
        "pypi": str(wheel_index(wheels, build_wheels, log=log)),
    }


def serve(sources, address, run_dir, state, log_dir):
    """Serve ``sources`` on ``address`` only; record the server in ``state`` before it starts."""
    www = pathlib.Path(run_dir) / "www"
    www.mkdir(parents=True, exist_ok=True)
    for name, directory in sources.items():
        with contextlib.suppress(FileNotFoundError):
            (www / name).unlink()
        (www / name).symlink_to(directory)
    port = free_port(address)
    record = {"name": "package-server", "address": address, "port": port, "log": str(pathlib.Path(log_dir) / "package-server.log")}
    state.data["servers"].append(record)
    state.save()
    process = ManagedProcess(
        "package-server",
        [sys.executable, "-m", "http.server", "--bind", address, "--directory", www, str(port)],
        record["log"],
    ).start()
    record["pid"] = process.popen.pid
    record["start_time"] = process_start_time(process.popen.pid)
    state.save()
    wait_for_port(address, port, 30.0, process)
    base = f"http://{address}:{port}"
    return {
        "url": base,
        "apt_repository": f"deb [trusted=yes] {base}/debian ./",
        "pip_index_url": f"{base}/pypi/simple/",
        "pip_trusted_host": address,
        "debian_dir": sources["debian"],
        "pypi_dir": sources["pypi"],
    }


# --------------------------------------------------------------------------
# For a site's own hosts


def build(dest, dpkg_status, debs=(), wheels=(), build_wheels=(), log=sys.stderr):
    """Build both sources into ``dest/debian`` and ``dest/pypi``.

    apt resolves ``debs`` against ``dpkg_status`` (a copy of one host's
    /var/lib/dpkg/status), so the repository holds what such hosts lack.
    """
    dest = pathlib.Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise TestHostError(f"{dest} is not empty: give a new directory, so that no file of an older build stays in it")
    status = pathlib.Path(dpkg_status).read_bytes()
    # prepare() takes a root whose var/lib/dpkg/status apt reads; named by the
    # status's digest, so that its cache follows the hosts' installed set.
    host_root = cache_dir("host-status", hashlib.sha256(status).hexdigest()[:16])
    (host_root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (host_root / "var/lib/dpkg/status").write_bytes(status)
    sources = prepare(host_root, debs=debs, wheels=wheels, build_wheels=build_wheels, log=log)
    for name, directory in sources.items():
        shutil.copytree(directory, dest / name)
    return {name: str(dest / name) for name in sources}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.harness.pkgrepo",
        description="Build a flat Debian repository and a PEP 503 wheel index for hosts without internet "
                    "(see docs/offline-install.md).",
    )
    parser.add_argument("--dest", required=True, help="new directory to write debian/ and pypi/ into")
    parser.add_argument("--dpkg-status", required=True, help="a copy of /var/lib/dpkg/status from one of the hosts")
    parser.add_argument("--deb", action="append", default=[], help="Debian package for the repository (repeat)")
    parser.add_argument("--wheel", action="append", default=[], help="requirement to download as a wheel (repeat)")
    parser.add_argument("--build-wheel", action="append", default=[],
                        help="requirement to build with pip wheel here, for packages without a wheel (repeat)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(build(args.dest, args.dpkg_status, args.deb, args.wheel, args.build_wheel), indent=2))
    except (TestHostError, CommandError, OSError) as error:
        print(f"pkgrepo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
