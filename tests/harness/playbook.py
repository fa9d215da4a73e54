"""Run the collection's modules and roles for real: ``ansible-playbook`` on localhost.

The collection is linked into a private ``ANSIBLE_COLLECTIONS_PATH`` as
``teapot.kms``; the modules run with the tools venv's Python (which carries
python-barbicanclient, keystoneauth1 and openstacksdk).  Results come back
through the ``ansible.posix.json`` callback, one entry per task and host.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


@dataclasses.dataclass
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str
    results: list

    def task(self, name):
        """The result of the task called ``name`` on localhost."""
        for task_name, result in self.results:
            if task_name == name:
                return result
        raise KeyError(f"no task {name!r} ran; tasks: {[task for task, _result in self.results]}\n{self.stderr[-3000:]}")

    @property
    def output(self):
        return self.stdout + self.stderr


class PlaybookRunner:
    """Writes a play of tasks and runs it against localhost, connection local."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        collections = self.workdir / "collections" / "ansible_collections" / "teapot"
        collections.mkdir(parents=True, exist_ok=True)
        link = collections / "kms"
        if not link.exists():
            link.symlink_to(REPO)
        self.collections_path = self.workdir / "collections"
        self._count = 0

    def env(self):
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OS_", "ANSIBLE_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            ANSIBLE_COLLECTIONS_PATH=str(self.collections_path),
            ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.workdir / "tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_HOST_KEY_CHECKING="0",
        )
        return env

    def run(self, tasks, extra_vars=None, check=False, diff=False, gather_facts=False, timeout=600, handlers=()):
        """Run ``tasks`` (a list of task dicts) in one play; ``extra_vars`` go through a 0600 file."""
        self._count += 1
        play = [{
            "name": "teapot.kms test play",
            "hosts": "localhost",
            "gather_facts": gather_facts,
            "vars": {"ansible_python_interpreter": sys.executable},
            "tasks": tasks,
        }]
        if handlers:
            play[0]["handlers"] = list(handlers)
        playbook = self.workdir / f"play-{self._count}.yml"
        playbook.write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
        argv = ["-i", "localhost,", "-c", "local", str(playbook)]
        return self._run(argv, extra_vars, check, diff, timeout)

    def run_playbook(self, playbook, inventory, extra_vars=None, check=False, diff=False, timeout=600, json_output=True,
                     limit=None):
        """Run a playbook of the collection (``teapot.kms.verify``) or a path against ``inventory``.

        ``inventory`` is a YAML inventory as a dict (groups, hosts, vars), or
        the path of an inventory file or directory.  With ``json_output=False``
        the default callback writes what a user sees; the results are then
        empty.  ``limit``: ``--limit``.
        """
        self._count += 1
        if isinstance(inventory, dict):
            inventory_file = self.workdir / f"inventory-{self._count}.yml"
            inventory_file.write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
        else:
            inventory_file = inventory
        argv = ["-i", str(inventory_file), str(playbook)] + (["--limit", limit] if limit else [])
        return self._run(argv, extra_vars, check, diff, timeout, json_output)

    def local_inventory(self, groups):
        """An inventory with localhost, connection local, as the only host of each of ``groups``."""
        host = {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                              "ansible_async_dir": str(self.workdir / "async")}}
        return {"all": {"children": {group: {"hosts": host} for group in groups}}}

    def _run(self, argv, extra_vars, check, diff, timeout, json_output=True):
        argv = [str(BIN / "ansible-playbook")] + argv
        if extra_vars:
            vars_file = self.workdir / f"vars-{self._count}.json"
            vars_file.touch(mode=0o600)
            vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
            argv += ["-e", f"@{vars_file}"]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        env = self.env()
        if not json_output:
            env["ANSIBLE_STDOUT_CALLBACK"] = "default"
        completed = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=self.workdir,
                                   timeout=timeout, check=False)
        results = _results(completed.stdout) if json_output else []
        return PlaybookRun(completed.returncode, completed.stdout, completed.stderr, results)


def render_barbican_config(runner, tmp_path, settings):
    """Write ``tmp_path/home/.barbican/barbican.conf`` from the barbican role's own variables and template
    with ``settings`` as extra vars; return the environment of Barbican's processes the role would set."""
    role = REPO / "roles" / "barbican"
    tasks = [
        {"name": "defaults", "ansible.builtin.include_vars": {"file": str(role / "defaults" / "main.yml")}},
        {"name": "vars", "ansible.builtin.include_vars": {"file": str(role / "vars" / "main.yml")}},
        {"name": "config", "ansible.builtin.template": {"src": str(role / "templates" / "barbican.conf.j2"),
                                                        "dest": str(tmp_path / "home" / ".barbican" / "barbican.conf"),
                                                        "mode": "0600"},
         "vars": {"_barbican_config": "{{ _barbican_config_assembled }}"}},
        {"name": "environment", "ansible.builtin.copy": {"content": "{{ _barbican_environment | to_json }}",
                                                         "dest": str(tmp_path / "environment.json"), "mode": "0600"}},
    ]
    (tmp_path / "home" / ".barbican").mkdir(parents=True)
    run = runner.run(tasks, extra_vars=settings)
    if run.returncode != 0:
        raise RuntimeError(f"rendering barbican.conf with the barbican role's template failed:\n{run.output[-4000:]}")
    return json.loads((tmp_path / "environment.json").read_text(encoding="utf-8"))


def _results(stdout):
    start = stdout.find("{")
    if start < 0:
        return []
    try:
        document = json.loads(stdout[start:])
    except ValueError:
        return []
    results = []
    for play in document.get("plays", []):
        for task in play.get("tasks", []):
            for _host, result in task.get("hosts", {}).items():
                results.append((task["task"]["name"], result))
    return results
