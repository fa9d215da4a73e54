"""The offline package sources: PEP 503 index pages and a flat Debian repository that apt accepts."""

import gzip
import hashlib
import html.parser
import shutil
import subprocess

import pytest

from tests.harness import pkgrepo, testhosts
from tests.harness.testhosts.apt_sources import debian_mirror


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


def _links(path):
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.hrefs


@pytest.mark.parametrize(
    "name, expected",
    [("prometheus_client", "prometheus-client"), ("Foo.Bar__baz", "foo-bar-baz"), ("PyMySQL", "pymysql")],
)
def test_normalize_follows_pep_503(name, expected):
    assert pkgrepo.normalize(name) == expected


def test_simple_index_links_every_wheel_with_its_sha256(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    # Wheel contents do not matter to the index: only names and digests.
    wheels = {
        "prometheus_client-0.26.0-py3-none-any.whl": b"one",
        "prometheus_client-0.25.0-py3-none-any.whl": b"two",
        "PyMySQL-1.1.1-py3-none-any.whl": b"three",
    }
    for name, content in wheels.items():
        (files / name).write_bytes(content)
    (files / "notes.txt").write_text("not a wheel", encoding="utf-8")

    pkgrepo._write_simple_index(tmp_path, files)  # pylint: disable=protected-access

    assert sorted(_links(tmp_path / "simple" / "index.html")) == ["prometheus-client/", "pymysql/"]
    links = _links(tmp_path / "simple" / "prometheus-client" / "index.html")
    assert len(links) == 2
    for link in links:
        target, fragment = link.split("#sha256=")
        file_name = target.rsplit("/", 1)[1]
        assert target == f"../../files/{file_name}"
        assert fragment == hashlib.sha256(wheels[file_name]).hexdigest()
        # The relative link resolves to the real file from the project page.
        assert (tmp_path / "simple" / "prometheus-client" / target).resolve() == (files / file_name).resolve()
    assert not any("notes" in link for link in _links(tmp_path / "simple" / "pymysql" / "index.html"))


def _build_deb(directory, name, version):
    root = directory / f"{name}-build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "share" / name).mkdir(parents=True)
    (root / "usr" / "share" / name / "hello").write_text("hello\n", encoding="utf-8")
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: teapot.kms <root@localhost>\n"
        f"Description: test package\n",
        encoding="utf-8",
    )
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", root, directory / f"{name}_{version}_all.deb"],
                   check=True, capture_output=True)
    shutil.rmtree(root)


@pytest.mark.skipif(not shutil.which("dpkg-scanpackages") or not shutil.which("apt-ftparchive"),
                    reason="needs dpkg-dev and apt-utils")
def test_flat_repository_indexes_match_the_debs(tmp_path):
    _build_deb(tmp_path, "teapot-probe", "1.0")
    _build_deb(tmp_path, "teapot-probe", "1.1")

    pkgrepo._write_flat_repo_indexes(tmp_path)  # pylint: disable=protected-access

    packages = (tmp_path / "Packages").read_text(encoding="utf-8")
    assert packages.count("Package: teapot-probe") == 2  # --multiversion keeps both
    assert "Filename: ./teapot-probe_1.1_all.deb" in packages
    with gzip.open(tmp_path / "Packages.gz", "rt", encoding="utf-8") as handle:
        assert handle.read() == packages
    release = (tmp_path / "Release").read_text(encoding="utf-8")
    for name in ("Packages", "Packages.gz"):
        data = (tmp_path / name).read_bytes()
        assert [hashlib.sha256(data).hexdigest(), str(len(data)), name] in _release_entries(release, "SHA256")


@pytest.mark.skipif(not shutil.which("dpkg-scanpackages") or not shutil.which("apt-ftparchive") or not shutil.which("apt-get"),
                    reason="needs dpkg-dev, apt-utils and apt")
def test_apt_reads_the_flat_repository(tmp_path):
    """apt checks the index digests against Release: both versions become installable."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _build_deb(repo, "teapot-probe", "1.0")
    _build_deb(repo, "teapot-probe", "1.1")
    pkgrepo._write_flat_repo_indexes(repo)  # pylint: disable=protected-access
    state = tmp_path / "apt"
    (state / "lists" / "partial").mkdir(parents=True)
    (state / "parts").mkdir()
    (state / "status").write_text("", encoding="utf-8")
    (state / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n", encoding="utf-8")
    options = []
    for key, value in {
        "Dir::State": state, "Dir::State::Lists": state / "lists", "Dir::State::status": state / "status",
        "Dir::Cache": state, "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": "",
        "Dir::Etc::SourceList": state / "sources.list", "Dir::Etc::SourceParts": state / "parts",
        "Debug::NoLocking": "true", "APT::Sandbox::User": "root",
    }.items():
        options += ["-o", f"{key}={value}"]
    update = subprocess.run(["apt-get", *options, "update"], capture_output=True, text=True, check=False)
    assert update.returncode == 0, update.stdout + update.stderr
    assert "W:" not in update.stderr and "E:" not in update.stderr, update.stderr
    policy = subprocess.run(["apt-cache", *options, "policy", "teapot-probe"], capture_output=True, text=True, check=True)
    assert "Candidate: 1.1" in policy.stdout
    assert " 1.0 " in policy.stdout


def _release_entries(release, section):
    """The ``[digest, size, name]`` lines of one checksum section of a Release file."""
    entries, inside = [], False
    for line in release.splitlines():
        if not line.startswith(" "):
            inside = line == f"{section}:"
        elif inside:
            entries.append(line.split())
    return entries


def test_debian_mirror_is_read_from_deb822_and_one_line_sources(tmp_path, monkeypatch):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# nothing here\n", encoding="utf-8")
    (etc / "sources.list.d" / "security.list").write_text(
        "deb [signed-by=/k.gpg] http://security.invalid/debian-security bookworm-security main\n", encoding="utf-8"
    )
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n\nTypes: deb\nEnabled: no\nURIs: http://disabled.invalid/debian\n"
        "Suites: bookworm\nComponents: main\n",
        encoding="utf-8",
    )
    monkeypatch.delenv("TEAPOT_KMS_DEBIAN_MIRROR", raising=False)
    assert debian_mirror("bookworm", apt_etc=etc) == "http://mirror.invalid/debian"
    assert debian_mirror("bookworm-security", apt_etc=etc) == "http://security.invalid/debian-security"
    with pytest.raises(testhosts.TestHostError, match="no apt source"):
        debian_mirror("trixie", apt_etc=etc)
    monkeypatch.setenv("TEAPOT_KMS_DEBIAN_MIRROR", "http://override.invalid/debian")
    assert debian_mirror("trixie", apt_etc=etc) == "http://override.invalid/debian"


@pytest.mark.skipif(not shutil.which("dpkg-scanpackages"), reason="needs dpkg-dev")
def test_build_for_a_site_writes_both_sources_into_a_new_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEAPOT_KMS_CACHE", str(tmp_path / "cache"))
    status = tmp_path / "status"
    status.write_text("Package: base-files\nStatus: install ok installed\nVersion: 12.4+deb12u1\n", encoding="utf-8")
    dest = tmp_path / "site"
    argv = ["--dest", str(dest), "--dpkg-status", str(status)]

    assert pkgrepo.main(argv) == 0

    assert sorted(path.name for path in dest.iterdir()) == ["debian", "pypi"]
    assert (dest / "debian" / "Packages").read_text(encoding="utf-8") == ""
    assert "SHA256:" in (dest / "debian" / "Release").read_text(encoding="utf-8")
    assert _links(dest / "pypi" / "simple" / "index.html") == []
    # apt resolved against this status: the copy is keyed by its content.
    digest = hashlib.sha256(status.read_bytes()).hexdigest()[:16]
    assert (tmp_path / "cache" / "host-status" / digest / "var/lib/dpkg/status").read_bytes() == status.read_bytes()

    capsys.readouterr()
    assert pkgrepo.main(argv) == 1
    assert f"{dest} is not empty: give a new directory" in capsys.readouterr().err
