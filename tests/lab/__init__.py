"""The lab: the whole collection deployed by its own playbooks on local systemd-nspawn hosts.

``make lab`` runs ``python -m tests.lab up``, ``make lab-down`` runs
``python -m tests.lab down``.  ``up``:

1. boots the hosts of ``lab.yml`` with the test-host harness, exactly as
   Molecule's create step does (``tests.harness.testhosts``: a bridge of the
   lab's own, offline package sources), or finds them up and reuses them, and
   writes the lab's inventory: hosts and groups, ``group_vars/all.yml`` (the
   lab's settings) and secrets drawn once per lab;
2. runs ``teapot.kms.site``, the playbook users run on real clusters,
   against that inventory, with Ansible's output as it comes;
3. prints a summary (``summary.yml``) and how long each step took.

Everything the lab writes lives in ``$TEAPOT_KMS_CACHE/lab`` (or
``$TEAPOT_KMS_LAB_DIR``); ``down`` removes it with the hosts, their bridge,
mounts and processes.
"""
