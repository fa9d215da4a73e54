"""Boot Debian test hosts with systemd under systemd-nspawn, on a bridge of their own.

Command line (``__main__``)::

    python -m tests.harness.testhosts rootfs
    python -m tests.harness.testhosts up --state STATE.json --host alpha --host beta \\
        [--deb curl ...] [--wheel prometheus-client ...] [--build-wheel NAME ...]
    python -m tests.harness.testhosts down --state STATE.json
    python -m tests.harness.testhosts prune
    python -m tests.harness.testhosts inventory --state STATE.json [--group NAME=HOST,HOST ...] [--vars-only]

``up`` builds (once) a cached bookworm rootfs, creates a bridge that only this
run uses, boots one container per host on an overlay of that rootfs with a
static address, an SSH key authorised for root and per-host SSH host keys,
and serves a Debian repository and a wheel index on the bridge's host-side
address (see ``tests.harness.pkgrepo``).  It prints the state as JSON.

``down`` undoes everything that the state file records.  The state file is
written before each resource is created, so ``down`` also cleans up after an
aborted ``up``; running it twice is harmless.  ``prune`` does the same for
runs whose state file was lost but whose processes are all gone.  ``up
--reuse`` returns a run that is complete and alive instead of refusing it.
``inventory`` prints an Ansible inventory of the run: its hosts (root over
SSH with the run's key and known_hosts), the groups given, and the
collection's package-source variables.  Console
and package-server logs stay in ``cache_dir("logs", "testhosts", RUN_ID)``.
The hosts have no route anywhere but their bridge.

Modules, one concern each:

- ``apt_sources``: the Debian mirror this machine's apt uses
- ``rootfs``: the cached debootstrap rootfs every host boots from
- ``state_file``: the run's JSON record, and telling its processes from reused PIDs
- ``subnets``: a free /24 for the run's bridge
- ``host_files``: what each host's overlay gets (hostname, SSH keys, static address)
- ``cgroups``: the cgroup each container's systemd runs in
- ``ssh``: waiting for a host to accept SSH, and its journal when it does not
- ``boot``: ``up``
- ``teardown``: ``down`` and ``prune``
- ``inventory``: the run as an Ansible inventory
"""


class TestHostError(RuntimeError):
    """A test host could not be built, booted or torn down."""
