"""The MariaDB accounts teapot.kms.barbican creates for Barbican: one per client network, in the form MariaDB
matches, so that Barbican's password opens the database only from barbican_database_client_networks.

The account hosts are rendered from the role's vars with ansible-core's Templar; a real MariaDB (the harness's,
on 127.0.0.1) decides who may log in.
"""

import os
import pathlib
import secrets
import subprocess

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "barbican"


def _client_hosts(networks):
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8"))
    # Role vars are templates Ansible trusts; values read here are not, unless marked.
    variables = {"_barbican_mariadb_client_hosts": trust_as_template(role_vars["_barbican_mariadb_client_hosts"]),
                 "barbican_database_client_networks": networks}
    return Templar(loader=DataLoader(), variables=variables).template(
        trust_as_template("{{ _barbican_mariadb_client_hosts }}"))


def _login(mariadb, user, password):
    """Log in over TCP from 127.0.0.1 (the password in the client's environment, never on its command line)."""
    return subprocess.run(
        ["mariadb", "--no-defaults", "--protocol=TCP", f"--host={mariadb.host}", f"--port={mariadb.port}",
         f"--user={user}", "--batch", "--skip-column-names", "--execute=SELECT CURRENT_USER()"],
        env={**os.environ, "MYSQL_PWD": password}, capture_output=True, text=True, check=False,
    )


def test_account_hosts_are_the_networks_as_mariadb_writes_them():
    assert _client_hosts(["127.0.0.1/32", "10.1.2.7/24", "172.16.0.0/12", "192.168.5.4", "0.0.0.0/0"]) == [
        "127.0.0.1", "10.1.2.0/255.255.255.0", "172.16.0.0/255.240.0.0", "192.168.5.4", "0.0.0.0/0.0.0.0"]


def test_the_database_task_creates_no_account_for_any_host():
    tasks = yaml.safe_load((ROLE / "tasks" / "database_mysql.yml").read_text(encoding="utf-8"))[0]["block"]
    users = [task["community.mysql.mysql_user"] for task in tasks if "community.mysql.mysql_user" in task]
    created = [user for user in users if user["state"] == "present"]
    assert [user["host"] for user in created] == ["{{ item }}"]
    assert next(task for task in tasks if task.get("community.mysql.mysql_user") is created[0])["loop"] == \
        "{{ _barbican_mariadb_client_hosts }}"


@pytest.mark.parametrize(("network", "allowed"), [
    ("127.0.0.1/32", True),
    ("127.0.0.9/8", True),      # host bits set: the account still names the network 127.0.0.0/255.0.0.0
    ("10.1.2.0/24", False),
    ("127.0.0.2/32", False),
])
def test_mariadb_lets_in_only_the_client_networks(mariadb, network, allowed):
    user = f"acct_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)
    (host,) = _client_hosts([network])
    mariadb.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}';\n")
    try:
        result = _login(mariadb, user, password)
    finally:
        mariadb.execute(f"DROP USER '{user}'@'{host}';\n")
    if allowed:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{user}@{host}"
    else:
        assert result.returncode != 0 and "Access denied" in result.stderr, (result.stdout, result.stderr)
