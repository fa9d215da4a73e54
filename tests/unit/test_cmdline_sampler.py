"""The Molecule command-line sampler and its check (molecule/shared/cmdline_sampler)."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[2] / "molecule" / "shared" / "cmdline_sampler"


def _load_check():
    spec = importlib.util.spec_from_file_location("cmdline_check", FIXTURE / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()

SECRETS = {"barbican_pkcs11_pin": "20261122", "barbican_database_password": "db pass/word+1"}


def test_a_secret_on_a_command_line_is_named_with_the_process_never_shown():
    records = {"kp-barbican": [
        {"source": "cmdline", "argv": ["/usr/bin/softhsm2-util", "--init-token", "--pin", "20261122"]},
        {"source": "cmdline", "argv": ["/bin/sh", "-c", "ls /etc"]},
    ]}
    findings, too_short = check.find_leaks(SECRETS, records)
    assert findings == [{"secret": "barbican_pkcs11_pin", "host": "kp-barbican", "source": "cmdline", "argv0": "softhsm2-util"}]
    assert too_short == []
    assert "20261122" not in json.dumps(findings)


def test_a_url_encoded_secret_and_one_in_a_long_lived_environment_are_found():
    records = {"h": [
        {"source": "cmdline", "argv": ["mysql", "mysql+pymysql://barbican:db%20pass%2Fword%2B1@db/barbican"]},
        {"source": "environ", "argv": ["/opt/venv/bin/uwsgi", "--ini", "x"], "env": ["PIN=20261122", "HOME=/"]},
    ]}
    findings, too_short = check.find_leaks(SECRETS, records)
    assert [(f["secret"], f["source"], f["argv0"]) for f in findings] == [
        ("barbican_database_password", "cmdline", "mysql"),
        ("barbican_pkcs11_pin", "environ", "uwsgi"),
    ]
    assert too_short == []


def test_clean_command_lines_pass_and_short_secrets_are_reported_not_trusted():
    records = {"h": [{"source": "cmdline", "argv": ["runuser", "-u", "barbican", "--", "python", "-c", "print(1)"]}]}
    findings, too_short = check.find_leaks({**SECRETS, "barbican_softhsm_so_pin": "1234"}, records)
    assert findings == []
    assert too_short == ["barbican_softhsm_so_pin"]


def test_a_keystone_fernet_token_is_a_finding_whoever_issued_it():
    token = "gAAAAABn" + "x1_-Yz" * 30
    records = {"h": [{"source": "cmdline", "argv": ["curl", "-H", "X-Auth-Token: " + token, "http://k:5000/v3"]}]}
    findings, too_short = check.find_leaks({}, records)
    assert findings == [{"secret": check.FERNET_TOKEN_NAME, "host": "h", "source": "cmdline", "argv0": "curl"}]
    assert too_short == []


def test_module_runs_count_the_ansible_module_shells():
    records = [
        {"source": "cmdline", "argv": ["/bin/sh", "-c", "/usr/bin/python3 /root/.ansible/tmp/a/AnsiballZ_command.py && sleep 0"]},
        {"source": "cmdline", "argv": ["/bin/sh", "-c", "/usr/bin/python3 && sleep 0"]},
        {"source": "cmdline", "argv": ["sleep", "10"]},
    ]
    assert check.module_runs(records) == 2


def test_the_sampler_records_a_short_lived_command_line_and_a_long_lived_environment(tmp_path):
    out = tmp_path / "samples.jsonl"
    sampler = subprocess.Popen([sys.executable, str(FIXTURE / "sampler.py"), str(out), "0.01", "0.3"])
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and "sampler.py" in out.read_text(encoding="utf-8")):
            assert time.monotonic() < deadline, "the sampler recorded nothing (not even itself)"
            time.sleep(0.05)
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.2)", "pin-on-argv-4711"], check=True)
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)"], check=True,
                       env={"TEAPOT_TEST_SECRET": "pin-in-env-4712"})
    finally:
        sampler.send_signal(signal.SIGTERM)
        sampler.wait(timeout=10)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    request = {"secrets": {"argv_pin": "pin-on-argv-4711", "env_pin": "pin-in-env-4712"}, "samples": {"here": str(out)}}
    result = subprocess.run([sys.executable, str(FIXTURE / "check.py")], input=json.dumps(request),
                            capture_output=True, text=True, check=True)
    out.unlink()  # it holds every command line of this machine
    report = json.loads(result.stdout)
    assert {(f["secret"], f["source"]) for f in report["findings"]} >= {("argv_pin", "cmdline"), ("env_pin", "environ")}
    assert "4711" not in result.stdout and "4712" not in result.stdout
