"""teapot.kms._tls, the TLS of the Keystone and Barbican roles, run for real on this machine.

The controller and the host are both this machine (connection local); every
path is below the test's directory.  The certificates are checked with
cryptography's X.509 path validation, as a TLS client would check them.
"""

import datetime
import grp
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509 import verification

from tests.harness.pki import TestCA
from tests.harness.playbook import PlaybookRunner

pytestmark = pytest.mark.slow

ROLE = "teapot.kms._tls : "


@pytest.fixture
def runner(tmp_path):
    return PlaybookRunner(tmp_path / "playbooks")


def _tls(tmp_path, **extra):
    host = tmp_path / "host"
    return [{
        "name": "tls",
        "ansible.builtin.include_role": {"name": "teapot.kms._tls"},
        "vars": {
            "teapot_kms_tls_ca_dir": str(tmp_path / "controller" / "ca"),
            "teapot_kms_tls_ca_host_path": str(host / "trust" / "ca.crt"),
            "_tls_name": "Probe",
            "_tls_certificate_path": str(host / "tls" / "probe.crt"),
            "_tls_key_path": str(host / "tls" / "probe.key"),
            "_tls_group": grp.getgrgid(os.getgid()).gr_name,
            "_tls_extra_names": ["keymanager.example.org"],
            "_tls_notify": ["probe changed"],
            **extra,
        },
    }, {"name": "trusted", "ansible.builtin.debug": {"var": "teapot_kms_tls_trusted_ca_file"}}]


HANDLERS = [{"name": "Record the notification", "ansible.builtin.debug": {"msg": "notified"}, "listen": "probe changed"}]


def _names(run):
    return [name for name, _result in run.results]


def _verify(ca_path, cert_path, name):
    """Validate ``cert_path`` for the server ``name`` (a DNS name or an IP) against the CA; raises if invalid."""
    store = verification.Store(x509.load_pem_x509_certificates(ca_path.read_bytes()))
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    subject = x509.IPAddress(ipaddress.ip_address(name)) if name[0].isdigit() else x509.DNSName(name)
    verifier = verification.PolicyBuilder().store(store).time(datetime.datetime.now(datetime.timezone.utc)) \
        .build_server_verifier(subject)
    verifier.verify(leaf, [])
    return leaf


def test_ca_then_a_server_certificate_that_chains_to_it(runner, tmp_path):
    ca_dir = tmp_path / "controller" / "ca"
    host = tmp_path / "host"
    run = runner.run(_tls(tmp_path), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((host / "tls" / "probe.key").stat().st_mode) == 0o640
    assert (host / "trust" / "ca.crt").read_bytes().strip() == (ca_dir / "ca.crt").read_bytes().strip()
    assert run.task("trusted")["teapot_kms_tls_trusted_ca_file"] == str(host / "trust" / "ca.crt")
    assert "Record the notification" in _names(run)
    for name in ("localhost", "127.0.0.1", "keymanager.example.org"):
        leaf = _verify(host / "trust" / "ca.crt", host / "tls" / "probe.crt", name)
    with pytest.raises(verification.VerificationError):
        _verify(host / "trust" / "ca.crt", host / "tls" / "probe.crt", "other.example.org")
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    # A second run keeps the CA, the key and the certificate, and notifies nobody.
    files = {path: path.read_bytes() for path in (ca_dir / "ca.key", ca_dir / "ca.crt", host / "tls" / "probe.key",
                                                  host / "tls" / "probe.crt")}
    run = runner.run(_tls(tmp_path), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert {path: path.read_bytes() for path in files} == files
    assert not [name for name, result in run.results if result.get("changed")], run.stdout
    assert "Record the notification" not in _names(run)

    # A deleted certificate is issued again for the same key (the rotation docs/security.md describes).
    (host / "tls" / "probe.crt").unlink()
    run = runner.run(_tls(tmp_path), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert (host / "tls" / "probe.key").read_bytes() == files[host / "tls" / "probe.key"]
    assert (host / "tls" / "probe.crt").read_bytes() != files[host / "tls" / "probe.crt"]
    _verify(host / "trust" / "ca.crt", host / "tls" / "probe.crt", "localhost")
    assert "Record the notification" in _names(run)


def test_a_ca_certificate_without_its_key_is_refused(runner, tmp_path):
    ca_dir = tmp_path / "controller" / "ca"
    assert runner.run(_tls(tmp_path), handlers=HANDLERS).returncode == 0
    ca_cert = (ca_dir / "ca.crt").read_bytes()
    (ca_dir / "ca.key").unlink()
    run = runner.run(_tls(tmp_path), handlers=HANDLERS)
    assert run.returncode != 0
    refusal = run.task(ROLE + "Refuse a CA certificate whose key is missing")
    assert refusal["failed"] is True
    assert f"{ca_dir}/ca.crt exists but its key {ca_dir}/ca.key does not" in refusal["msg"]
    assert "Restore ca.key from your backup" in refusal["msg"]
    assert not (ca_dir / "ca.key").exists() and (ca_dir / "ca.crt").read_bytes() == ca_cert


def test_your_own_certificate_and_trust_anchor(runner, tmp_path):
    own = TestCA(tmp_path / "own-ca", "own-ca")
    cert_path, key_path = own.issue("server", dns_names=["keymanager.example.org"], server=True)
    host = tmp_path / "host"
    run = runner.run(_tls(tmp_path, _tls_certificate=cert_path.read_text(), _tls_key=str(key_path),
                          teapot_kms_tls_ca_certificate=str(own.cert_path)), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert (host / "tls" / "probe.crt").read_bytes().strip() == cert_path.read_bytes().strip()
    assert (host / "tls" / "probe.key").read_bytes().strip() == key_path.read_bytes().strip()
    assert (host / "trust" / "ca.crt").read_bytes().strip() == own.cert_path.read_bytes().strip()
    _verify(host / "trust" / "ca.crt", host / "tls" / "probe.crt", "keymanager.example.org")
    # The collection's CA was not made.
    assert not (tmp_path / "controller" / "ca").exists()

    run = runner.run(_tls(tmp_path, _tls_certificate=str(cert_path)), handlers=HANDLERS)
    assert run.returncode != 0
    assert "set both the certificate and its key" in run.task(ROLE + "Refuse a certificate without its key")["msg"]
