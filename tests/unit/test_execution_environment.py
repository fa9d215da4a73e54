"""The execution environment: ``ansible-builder create`` writes its build context from execution-environment.yml
and the collection's tarball, and ansible-builder's own introspection reads the collection's requirements
(meta/execution-environment.yml). No image is built: that needs a container engine."""

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The directory a user builds in: the collection tarball in context-src/, and the builder's context/."""
    work = tmp_path_factory.mktemp("ee")
    build = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work / "context-src"), str(ROOT)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    shutil.copyfile(ROOT / "execution-environment.yml", work / "execution-environment.yml")
    create = subprocess.run([str(BIN / "ansible-builder"), "create", "--file", "execution-environment.yml", "--context", "context"],
                            cwd=work, capture_output=True, text=True, check=False)
    assert create.returncode == 0, create.stdout + create.stderr
    return work


def test_create_writes_the_build_context(context):
    definition = yaml.safe_load((ROOT / "execution-environment.yml").read_text(encoding="utf-8"))
    assert definition["version"] == 3
    containerfile = next(path for path in (context / "context").iterdir() if path.name in ("Containerfile", "Dockerfile"))
    text = containerfile.read_text(encoding="utf-8")
    assert "ansible-core==2.19.14" in text
    collections = yaml.safe_load((context / "context" / "_build" / "requirements.yml").read_text(encoding="utf-8"))["collections"]
    tarball = next(entry for entry in collections if entry["name"] == "teapot.kms")["source"]
    assert (context / "context" / "_build" / tarball).is_file()
    assert {"openstack.cloud", "community.mysql", "community.postgresql", "awx.awx"} <= {entry["name"] for entry in collections}


def test_introspection_reads_the_collection_requirements(context, tmp_path):
    tarball = next((context / "context-src").glob("teapot-kms-*.tar.gz"))
    # --force: `make` puts this checkout on ANSIBLE_COLLECTIONS_PATH, where
    # ansible-galaxy would find teapot.kms installed already and skip it.
    install = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(tmp_path), str(tarball)],
                             capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    introspect = subprocess.run([sys.executable, str(context / "context" / "_build" / "scripts" / "introspect.py"), "introspect", str(tmp_path)],
                                capture_output=True, text=True, check=False)
    assert introspect.returncode == 0, introspect.stdout + introspect.stderr
    found = yaml.safe_load(introspect.stdout)
    python = [line.split("#")[0].strip() for line in found["python"]]
    system = [line.split("#")[0].strip() for line in found["system"]]
    # What the controller runs: the Barbican modules, and pip wheel for the plugin.
    for requirement in ("python-barbicanclient==7.6.0", "keystoneauth1==5.18.1", "openstacksdk==4.22.0"):
        assert requirement in python
    assert "openssh-client [platform:dpkg]" in system and "openssh-clients [platform:rpm]" in system
