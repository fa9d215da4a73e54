"""Test fixture: find secrets in the command lines the sampler recorded.

Reads on stdin a JSON object {"secrets": {NAME: VALUE}, "samples": {HOST:
PATH}}, PATH being a file written by sampler.py, and prints a JSON object
{"findings": [{"secret", "host", "source", "argv0"}], "too_short": [NAME],
"secrets": N, "records": N, "module_runs": {HOST: N}}: it names the secret and
the process, never the value.  module_runs counts the Ansible module runs seen
on each host, the proof that the sampler ran during the play.
A Keystone Fernet token (any, whoever issued it) is a finding too.
"""

import json
import os
import re
import sys
import urllib.parse

# Shorter values would match by chance: the caller is told, not reassured.
MIN_LENGTH = 6
FERNET_TOKEN = re.compile(r"gAAAAA[A-Za-z0-9_-]{80,}")
FERNET_TOKEN_NAME = "a Keystone Fernet token"


def variants(value):
    """The forms a secret takes on a command line: as is, and URL-encoded."""
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}


def texts(record):
    if record.get("source") == "environ":
        return record.get("env", [])
    return record.get("argv", [])


def argv0(record):
    argv = record.get("argv") or [""]
    return os.path.basename(argv[0]) or argv[0]


def find_leaks(secrets, records_by_host):
    """Return (findings, too_short) for {name: value} and {host: [record]}."""
    too_short = sorted(name for name, value in secrets.items() if len(value) < MIN_LENGTH)
    needles = {name: variants(value) for name, value in secrets.items() if len(value) >= MIN_LENGTH}
    findings = []
    for host in sorted(records_by_host):
        for record in records_by_host[host]:
            text = "\0".join(texts(record))
            names = sorted(name for name, forms in needles.items() if any(form in text for form in forms))
            if FERNET_TOKEN.search(text):
                names.append(FERNET_TOKEN_NAME)
            for name in names:
                finding = {"secret": name, "host": host, "source": record.get("source", "cmdline"), "argv0": argv0(record)}
                if finding not in findings:
                    findings.append(finding)
    return findings, too_short


def module_runs(records):
    """Ansible runs every module behind "&& sleep 0", piped or from an AnsiballZ file."""
    return sum(1 for record in records if record.get("source") == "cmdline"
               and any(mark in " ".join(record.get("argv", [])) for mark in ("AnsiballZ_", "sleep 0")))


def read_records(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main():
    request = json.load(sys.stdin)
    records = {host: read_records(path) for host, path in request["samples"].items()}
    findings, too_short = find_leaks(request["secrets"], records)
    print(json.dumps({"findings": findings, "too_short": too_short, "secrets": len(request["secrets"]),
                      "records": sum(len(items) for items in records.values()),
                      "module_runs": {host: module_runs(items) for host, items in records.items()}}))


if __name__ == "__main__":
    main()
