"""The Debian mirror this machine's apt uses: the test hosts install from the same one."""

import os
import pathlib

from tests.harness.testhosts import TestHostError

SUITE = "bookworm"


def _sources_entries(etc):
    """Yield (uris, suites, components) of every enabled apt source below ``etc``."""
    etc = pathlib.Path(etc)
    one_line_files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for path in one_line_files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2:
                yield [words[0]], [words[1]], words[2:]
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            if "deb" not in fields.get("types", []):
                continue
            yield fields.get("uris", []), fields.get("suites", []), fields.get("components", [])


def debian_mirror(suite=SUITE, apt_etc="/etc/apt"):
    """Return the URI of the mirror that apt on this machine uses for ``suite`` main."""
    override = os.environ.get("TEAPOT_KMS_DEBIAN_MIRROR")
    if override:
        return override
    for uris, suites, components in _sources_entries(apt_etc):
        if suite in suites and "main" in components and uris:
            return uris[0]
    raise TestHostError(
        f"no apt source for '{suite} main' in /etc/apt/sources.list(.d); "
        "set TEAPOT_KMS_DEBIAN_MIRROR to a Debian mirror URI"
    )
