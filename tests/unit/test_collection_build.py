"""The collection builds into a tarball that ansible-galaxy installs, and the
tarball carries what users need and none of the development files."""

import json
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GALAXY = pathlib.Path(sys.executable).with_name("ansible-galaxy")

# Paths (first component, or a glob on the whole name) that must never ship.
FORBIDDEN_TOP = {"tests", "molecule", "bench", ".ci", ".config", ".git", ".cache", "Makefile", "pytest.ini"}


@pytest.fixture(scope="module")
def built_tarball(tmp_path_factory):
    if not GALAXY.exists():
        pytest.fail(f"ansible-galaxy not found beside {sys.executable}: run `make venv`")
    out = tmp_path_factory.mktemp("build")
    # Build from a copy holding only what git knows, like a clean clone.
    src = out / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # Development leftovers a developer's tree may hold: they must stay out too.
    (src / "plugins" / "__pycache__").mkdir(parents=True, exist_ok=True)
    (src / "plugins" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    result = subprocess.run(
        [str(GALAXY), "collection", "build", "--output-path", str(out), str(src)],
        check=False, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tarballs = list(out.glob("teapot-kms-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    return tarballs[0]


def test_tarball_holds_no_development_files(built_tarball):
    with tarfile.open(built_tarball) as tar:
        names = tar.getnames()
    offending = [
        name for name in names
        if name.split("/")[0] in FORBIDDEN_TOP
        or "__pycache__" in name.split("/")
        or name.startswith("daemon/tests")
    ]
    assert not offending, f"development files in the tarball: {offending}"
    for required in ("MANIFEST.json", "FILES.json", "README.md", "LICENSE", "meta/runtime.yml"):
        assert required in names, f"{required} missing from the tarball"


def test_tarball_installs(built_tarball, tmp_path):
    target = tmp_path / "collections"
    result = subprocess.run(
        [str(GALAXY), "collection", "install", "--offline", "--force", "-p", str(target), str(built_tarball)],
        check=False, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((target / "ansible_collections" / "teapot" / "kms" / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "teapot"
    assert manifest["collection_info"]["name"] == "kms"
