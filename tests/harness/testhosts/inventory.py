"""An Ansible inventory for the hosts of one run: how to reach them, and the collection's package-source variables."""


def collection_vars(data):
    """The collection-wide variables (teapot.kms.package_sources) that point hosts at the run's package sources."""
    sources = data["package_sources"]
    return {
        "teapot_kms_apt_repositories": [sources["apt_repository"]],
        "teapot_kms_apt_only_local": True,
        "teapot_kms_pip_index_url": sources["pip_index_url"],
        "teapot_kms_pip_trusted_hosts": [sources["pip_trusted_host"]],
        "testhosts_bridge_address": data["gateway"],
    }


def ansible_inventory(data, groups=None, vars_only=False):
    """A YAML-ready inventory of the run ``data`` (the state ``up`` returns).

    ``groups`` maps group names to host names of the run.  With ``vars_only``
    only ``all.vars`` is given (Molecule knows the hosts from its instance config).
    """
    inventory = {"all": {"vars": collection_vars(data)}}
    if vars_only:
        return inventory
    known = {host["name"] for host in data["hosts"]}
    unknown = sorted({name for members in (groups or {}).values() for name in members} - known)
    if unknown:
        raise ValueError(f"groups name hosts the run does not have: {unknown} (hosts: {sorted(known)})")
    inventory["all"]["hosts"] = {
        host["name"]: {
            "ansible_host": host["address"],
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": data["private_key"],
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={data['known_hosts']} -o StrictHostKeyChecking=yes",
        }
        for host in data["hosts"]
    }
    inventory["all"]["children"] = {
        name: {"hosts": {member: None for member in members}} for name, members in sorted((groups or {}).items())
    }
    return inventory
