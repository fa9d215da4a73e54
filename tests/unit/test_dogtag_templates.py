"""The teapot.kms.dogtag role's deployment files, rendered as Ansible renders them, hold only keys that pkispawn
documents, in the sections pkispawn reads, and give pkispawn back the passwords exactly as they were set.

Nothing here runs Dogtag: its server is not packaged for Debian (see docs/dogtag.md).
"""

import configparser
import pathlib

import jinja2
import pytest
import yaml
from ansible.plugins.filter.core import FilterModule

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "dogtag"

# The keys pkispawn documents for the sections this role writes.  Source: pki_default.cfg(5), installed as
# /usr/share/pki/server/etc/default.cfg, in dogtagpki/pki at base/server/etc/default.cfg (commit
# 003a18b7f66fa30962a97e8ed88aaae8d4b46e76); pki_instance_name, pki_https_port and pki_http_port are the
# Tomcat instance keys that file names in a comment of [DEFAULT] and pkispawn(8) documents.  Only the keys
# that the role may write are listed, each in the section default.cfg defines it in.
DOCUMENTED = {
    "DEFAULT": {
        "pki_instance_name", "pki_https_port", "pki_http_port",
        "pki_admin_password", "pki_client_pkcs12_password", "pki_client_database_password",
        "pki_ds_bind_dn", "pki_ds_ldap_port", "pki_ds_password",
        "pki_security_domain_name", "pki_security_domain_hostname", "pki_security_domain_https_port",
        "pki_security_domain_user", "pki_security_domain_password",
        "pki_cert_chain_path",
        "pki_hsm_enable", "pki_hsm_libfile", "pki_hsm_modulename", "pki_token_name", "pki_token_password",
    },
    "Tomcat": {
        "pki_clone", "pki_clone_pkcs12_path", "pki_clone_pkcs12_password", "pki_clone_replication_master_port",
        "pki_clone_replication_clone_port", "pki_clone_uri", "pki_master_hostname", "pki_master_https_port",
    },
    "CA": {"pki_admin_uid", "pki_import_admin_cert"},
    "KRA": {"pki_admin_uid", "pki_import_admin_cert", "pki_admin_cert_file"},
}
# pki_default.cfg's sensitive_parameters that the role writes.
SECRETS = {"pki_admin_password", "pki_client_pkcs12_password", "pki_ds_password", "pki_security_domain_password",
           "pki_token_password", "pki_clone_pkcs12_password"}

# Values with what INI and ConfigParser interpolation treat specially.
AWKWARD = "p%ss;w0rd #%(x)s"


def _variables(**overrides):
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    variables.update(yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8")))
    variables.update(
        ansible_managed="Ansible managed",
        dogtag_hostname="kra.example.org",
        dogtag_security_domain_name="example.org Security Domain",
        _dogtag_client_dir="/root/.dogtag/pki-tomcat",
        dogtag_ds_password="ds-" + AWKWARD,
        dogtag_admin_password="admin-" + AWKWARD,
        dogtag_client_pkcs12_password="p12-" + AWKWARD,
    )
    variables.update(overrides)
    return variables


def _render(template, variables):
    # Ansible's template settings: trim_blocks on, a trailing newline kept, its own filters.
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True,
                                     keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    environment.filters.update(FilterModule().filters())
    return environment.get_template(template).render(variables)


def _parse(text):
    # pkispawn's own parser: ConfigParser with its interpolation, case-sensitive keys.
    parser = configparser.ConfigParser()
    parser.optionxform = str
    parser.read_string(text)
    return parser


CASES = {
    "ca": ("ca.cfg.j2", {}),
    "kra": ("kra.cfg.j2", {}),
    "ca-hsm": ("ca.cfg.j2", {"dogtag_hsm_enable": True, "dogtag_hsm_libfile": "/usr/lib64/libvendor.so",
                             "dogtag_hsm_modulename": "vendor", "dogtag_token_name": "kra-token",
                             "dogtag_token_password": "pin-" + AWKWARD}),
    "kra-hsm": ("kra.cfg.j2", {"dogtag_hsm_enable": True, "dogtag_hsm_libfile": "/usr/lib64/libvendor.so",
                               "dogtag_hsm_modulename": "vendor", "dogtag_token_name": "kra-token",
                               "dogtag_token_password": "pin-" + AWKWARD}),
    "kra-clone": ("kra.cfg.j2", {"dogtag_clone": True, "dogtag_clone_master_hostname": "kra1.example.org",
                                 "dogtag_clone_pkcs12_path": "/root/kra-certs.p12",
                                 "dogtag_clone_pkcs12_password": "clone-" + AWKWARD,
                                 "dogtag_clone_cert_chain_path": "/root/ca.pem",
                                 "dogtag_security_domain_password": "sd-" + AWKWARD}),
}


@pytest.mark.parametrize("case", CASES)
def test_every_key_is_documented_in_its_section(case):
    template, overrides = CASES[case]
    parser = _parse(_render(template, _variables(**overrides)))
    sections = {"DEFAULT": parser.defaults(), **{name: parser[name] for name in parser.sections()}}
    assert set(sections) <= set(DOCUMENTED)
    for name, section in sections.items():
        own = set(section) if name == "DEFAULT" else set(section) - set(parser.defaults())
        undocumented = own - DOCUMENTED[name]
        assert not undocumented, f"{template} [{name}]: {sorted(undocumented)} are not pkispawn options"


@pytest.mark.parametrize("case", CASES)
def test_passwords_reach_pkispawn_unchanged(case):
    template, overrides = CASES[case]
    variables = _variables(**overrides)
    parser = _parse(_render(template, variables))
    values = {key: parser.get("DEFAULT", key) for key in parser.defaults()}
    for section in parser.sections():
        values.update({key: parser.get(section, key) for key in parser[section]})
    written = SECRETS & set(values)
    assert "pki_admin_password" in written and "pki_ds_password" in written
    expected = {variables[name] for name in variables if name.endswith("password") and variables[name]}
    for key in written:
        assert values[key] in expected, f"{key} reads back as {values[key]!r}"


def test_the_modes_switch_what_is_written():
    kra = _parse(_render("kra.cfg.j2", _variables()))
    assert "pki_hsm_enable" not in kra.defaults() and not kra.has_section("Tomcat")
    assert kra.get("DEFAULT", "pki_security_domain_password") == "admin-" + AWKWARD
    hsm = _parse(_render(*CASES["kra-hsm"][:1], _variables(**CASES["kra-hsm"][1])))
    assert hsm.getboolean("DEFAULT", "pki_hsm_enable") is True
    assert hsm.get("DEFAULT", "pki_token_name") == "kra-token"
    clone = _parse(_render("kra.cfg.j2", _variables(**CASES["kra-clone"][1])))
    assert clone.getboolean("Tomcat", "pki_clone") is True
    assert clone.get("Tomcat", "pki_clone_uri") == "https://kra1.example.org:8443"
    assert clone.get("DEFAULT", "pki_security_domain_password") == "sd-" + AWKWARD


def test_directory_server_file_holds_the_password():
    parser = configparser.RawConfigParser()
    parser.read_string(_render("ds.inf.j2", _variables(dogtag_ds_password="ds-secret")))
    assert parser.get("slapd", "root_password") == "ds-secret"
    assert parser.get("slapd", "instance_name") == "pki"


def test_no_password_on_a_command_line():
    """Every command of the role takes its secrets from files or the environment."""
    for tasks_file in sorted((ROLE / "tasks").glob("*.yml")):
        for task in _tasks(yaml.safe_load(tasks_file.read_text(encoding="utf-8")) or []):
            command = task.get("ansible.builtin.command")
            if command:
                assert "password" not in yaml.safe_dump(command.get("argv", command.get("cmd", ""))), (
                    f"{tasks_file.name}: {task['name']} passes a password on the command line")


def _tasks(tasks):
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key, []))
