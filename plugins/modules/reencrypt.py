#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: reencrypt
short_description: Rewrite every stored object through the Kubernetes API so that it moves to the first provider
version_added: 0.1.0
description:
  - Reads every object of the given resources and writes it back unchanged (C(PUT) with the same object and its
    C(resourceVersion)). The API server skips the write of an object that is already stored by the first provider
    of its EncryptionConfiguration under the current key, and rewrites every other one. After a new provider or key
    became first, this moves every object to it.
  - Each object ends up C(rewritten) (its C(resourceVersion) changed), C(already_current) (the API server skipped
    the write), C(deleted) (gone before its turn; it is never recreated) or C(failed).
    An object that someone changed during the run (C(409 Conflict)) is read again and written back in its new
    version, so no concurrent change is lost; RV(resources) counts those in C(conflicts).
  - Lists in pages (O(page_size)) and keeps to O(qps) requests per second.
  - Records in O(state_file), after every object, where each resource got to. A run that was interrupted (killed,
    timed out, failed) resumes from there; a completed run marks the file completed and the next run starts over.
  - Ansible modules cannot stream output while they run. The module appends a progress line every few seconds to
    O(progress_log); run it with C(async) and C(poll) (as the C(teapot.kms.reencrypt) playbook does) and follow
    that file with C(tail -f) on the node.
  - Optionally compacts etcd at its current revision and defragments its members afterwards, so that the previous
    revisions of the objects, which still hold their old (possibly plaintext) values, are gone. See O(etcd_compact).
  - Runs on a node that reaches the API server with a kubeconfig, normally a control-plane node with
    C(/etc/kubernetes/admin.conf).
extends_documentation_fragment:
  - teapot.kms.attributes
  - teapot.kms.etcd
attributes:
  check_mode:
    support: full
    details:
      - Lists the objects and counts them in RV(resources) as C(total); writes nothing, neither objects nor
        O(state_file) nor O(progress_log), and does not touch etcd.
      - Which of them the API server would really rewrite shows only by writing;
        M(teapot.kms.secret_encryption_info) reads it from etcd.
  diff_mode:
    support: none
options:
  resources:
    description:
      - The resources to rewrite, as the EncryptionConfiguration names them.
      - V(secrets), V(configmaps) or any core resource; V(<plural>.<group>) for other groups and custom resources
        (for example V(widgets.example.com)), whose version is discovered; or V(<plural>.<version>.<group>).
    type: list
    elements: str
    default: [secrets]
  kubeconfig:
    description:
      - The kubeconfig to reach the API server with. Its user needs C(list), C(get) and C(update) on O(resources).
    type: path
    default: /etc/kubernetes/admin.conf
  context:
    description:
      - The kubeconfig context. Default is its current context.
    type: str
  qps:
    description:
      - At most this many API requests per second (lists, reads and writes together). V(0) means no limit.
      - Every rewrite is an etcd write and, for a KMS provider, an encryption with the current data key; watchers of
        the resource receive every rewritten object.
    type: float
    default: 50
  page_size:
    description:
      - Objects per list request (C(limit)).
    type: int
    default: 500
  request_timeout:
    description:
      - Seconds to wait for one API request.
    type: int
    default: 30
  state_file:
    description:
      - Where the run records its progress (JSON, mode 0600, no object content). Its directory is created (0700).
    type: path
    default: /var/lib/teapot-kms/reencrypt-state.json
  resume:
    description:
      - Whether to resume from an interrupted run recorded in O(state_file). V(false) starts over.
      - A state file of another API server (another kubeconfig server) is never resumed from.
    type: bool
    default: true
  progress_log:
    description:
      - A file that gets one progress line every O(progress_interval) seconds and one per resource. Empty for none.
    type: path
    default: /var/log/teapot-kms/reencrypt.log
  progress_interval:
    description:
      - Seconds between progress lines.
    type: float
    default: 5
  etcd_compact:
    description:
      - After a run without failures, compact etcd (O(etcd)) at its current revision, so that the older revisions
        of every key, which still hold the values written before the rewrite, can no longer be read.
      - Compaction drops the whole history of the keyspace up to that revision. Watchers that resume from an older
        revision (controllers, informers) get C(410 Gone) and list everything again, which loads the API servers
        for a while on a large cluster. The API server compacts on its own every few minutes anyway; this option
        only makes it happen now.
      - Backups and snapshots of etcd taken before still hold the old values. Rotate or destroy them separately.
    type: bool
    default: false
  etcd_defragment:
    description:
      - After compaction, defragment every member in O(etcd.endpoints), one after the other, so that the freed
        pages that may still hold old values are rewritten and the database file shrinks.
      - Defragmenting blocks reads and writes on that member while it runs (seconds to minutes on a large
        database). Run it in a quiet period. Requires O(etcd_compact=true).
    type: bool
    default: false
requirements:
  - the C(kubernetes) Python client on the node that runs the module (tested with 37.0.2, the version the
    C(teapot.kms.reencrypt) playbook installs into its own venv, and with 31.0.0)
notes:
  - Switch every API server to the new EncryptionConfiguration (and wait until each reports the new key) before
    running this; an API server still on the old configuration would write objects back under the old provider.
  - Counts across an interruption add up. The object in flight when a run was killed is done again by the next run
    and counted there, as C(already_current) when the killed run had rewritten it.
seealso:
  - module: teapot.kms.secret_encryption_info
  - module: teapot.kms.encryption_config
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Move every Secret and ConfigMap to the first provider, at most 100 requests per second
  teapot.kms.reencrypt:
    resources: [secrets, configmaps]
    qps: 100
  async: 7200
  poll: 15
  register: reencrypt

- name: Show the counts
  ansible.builtin.debug:
    var: reencrypt.summary

- name: Count what a run would submit, touching nothing
  teapot.kms.reencrypt:
    resources: [secrets, widgets.example.com]
  check_mode: true

- name: Rewrite, then drop the old revisions from etcd
  teapot.kms.reencrypt:
    etcd_compact: true
    etcd_defragment: true
    etcd:
      endpoints: [https://10.0.0.11:2379, https://10.0.0.12:2379, https://10.0.0.13:2379]
      cacert: /etc/kubernetes/pki/etcd/ca.crt
      cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
      key: /etc/kubernetes/pki/apiserver-etcd-client.key
'''

RETURN = r'''
summary:
  description: Counts over all resources, including those of the interrupted run this one resumed.
  returned: always
  type: dict
  contains:
    total:
      description: Objects submitted (in check mode, objects listed).
      type: int
    rewritten:
      description: Objects the API server wrote again, now under the first provider.
      type: int
    already_current:
      description: Objects the API server did not need to rewrite.
      type: int
    deleted:
      description: Objects deleted during the run; they stay deleted.
      type: int
    failed:
      description: Objects that could not be written; see RV(failures).
      type: int
    conflicts:
      description: Objects changed by someone else during the run, read again and written back in their new version.
      type: int
  sample: {total: 1200, rewritten: 1150, already_current: 50, deleted: 0, failed: 0, conflicts: 2}
resources:
  description: The same counts per resource, keyed by the resource's name.
  returned: always
  type: dict
  sample: {secrets: {total: 1200, rewritten: 1150, already_current: 50, deleted: 0, failed: 0, conflicts: 2}}
failures:
  description: The objects that failed (at most 100), with the API server's answer.
  returned: always
  type: list
  elements: dict
  sample: [{resource: secrets, namespace: default, name: broken, status: 422, message: "..."}]
resumed:
  description: Whether this run continued an interrupted one from O(state_file).
  returned: always
  type: bool
complete:
  description: Whether every resource was gone through (false only when the module failed part-way).
  returned: always
  type: bool
elapsed_seconds:
  description: How long this run took.
  returned: always
  type: float
objects_per_second:
  description: Objects submitted by this run per second.
  returned: always
  type: float
etcd:
  description: What was done to etcd; V(null) when nothing was asked (or in check mode).
  returned: always
  type: dict
  contains:
    compacted_revision:
      description: The revision etcd was compacted at.
      type: int
    compacted:
      description: Whether this run compacted; V(false) when etcd was compacted at that revision already.
      type: bool
    defragmented:
      description: The endpoints that were defragmented.
      type: list
      elements: str
'''

import datetime
import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdError, client_from_params, etcd_argument_spec
from ansible_collections.teapot.kms.plugins.module_utils._kubernetes import (
    DEFAULT_KUBECONFIG,
    HAS_KUBERNETES,
    KUBERNETES_IMPORT_ERROR,
    KubeClient,
    KubeError,
    Resource,
    object_key,
    status_message,
)

STATE_VERSION = 1
COUNTERS = ("total", "rewritten", "already_current", "deleted", "failed", "conflicts")
MAX_FAILURES_REPORTED = 100
# Attempts per object: a 409 is followed by a fresh read and another write; 429 and 5xx wait and retry.
MAX_ATTEMPTS = 5
MAX_BACKOFF = 10.0


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Pacer:
    """Spaces calls at least 1/qps seconds apart (no burst: a rewrite storm is what it prevents)."""

    def __init__(self, qps):
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.next_at = 0.0

    def wait(self):
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


class RunState:
    """The state file: per resource, the continue token of the page in progress and the last object done."""

    def __init__(self, path, server, enabled=True):
        self.path = path
        self.enabled = enabled and bool(path)
        self.data = {"version": STATE_VERSION, "server": server, "started": _now(), "completed": None, "resources": {}}
        self.resumed = False
        self.warnings = []

    def load(self, resume):
        if not self.enabled or not os.path.exists(self.path):
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                old = json.load(handle)
        except (OSError, ValueError) as exc:
            self.warnings.append(f"ignored the unreadable state file {self.path} ({exc}); starting over")
            return
        if not isinstance(old, dict) or old.get("version") != STATE_VERSION or old.get("completed"):
            return
        if old.get("server") != self.data["server"]:
            self.warnings.append(f"the state file {self.path} is of the API server {old.get('server')}, not "
                                 f"{self.data['server']}; starting over")
            return
        if not resume:
            return
        self.data = old
        self.resumed = True

    def resource(self, name):
        entry = self.data["resources"].setdefault(name, {})
        entry.setdefault("continue", None)
        entry.setdefault("last", None)
        entry.setdefault("done", False)
        counts = entry.setdefault("counts", {})
        for counter in COUNTERS:
            counts.setdefault(counter, 0)
        return entry

    def save(self):
        if not self.enabled:
            return
        self.data["updated"] = _now()
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        # Write then rename: a run killed at any instant leaves the previous or the new state, never half of one.
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".reencrypt-state.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(self.data, out)
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def complete(self):
        self.data["completed"] = _now()
        self.save()


class Progress:
    """Progress lines in a log file, for `tail -f` while the module runs under async."""

    def __init__(self, path, interval, enabled=True):
        self.path = path if enabled else None
        self.interval = interval
        self.last = 0.0

    def write(self, message):
        if not self.path:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(f"{_now()} {message}\n")
        self.last = time.monotonic()

    def tick(self, message_factory):
        if self.path and time.monotonic() - self.last >= self.interval:
            self.write(message_factory())


def _describe(name, counts, rate=None):
    text = (f"{name}: {counts['total']} done ({counts['rewritten']} rewritten, {counts['already_current']} already "
            f"current, {counts['deleted']} deleted, {counts['failed']} failed, {counts['conflicts']} conflicts)")
    return text if rate is None else f"{text}, {rate:.1f} objects/s"


class Reencryptor:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.check = module.check_mode
        self.pacer = Pacer(self.params["qps"])
        self.failures = []
        self.processed = 0
        self.started = time.monotonic()
        self.client = None
        self.state = None
        self.progress = Progress(self.params["progress_log"], self.params["progress_interval"], enabled=not self.check)

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, **extra)

    def call(self, method, path, query=None, body=None):
        self.pacer.wait()
        return self.client.request(method, path, query=query, body=body)

    def resolve(self, names):
        resources = []
        for name in names:
            try:
                resource = Resource.parse(name)
            except ValueError as exc:
                self.fail(str(exc))
            if resource.version is None:
                resource.version = self.client.preferred_version(resource.group, resource.plural)
            resources.append(resource)
        return resources

    def list_page(self, resource, token):
        """One page: ``(items, next token, token actually used)``; an expired token continues or starts over."""
        query = {"limit": self.params["page_size"], "continue": token}
        for _attempt in range(MAX_ATTEMPTS):
            status, body, headers = self.call("GET", resource.list_path(), query=query)
            if status == 200 and isinstance(body, dict):
                return self._page_items(body), (body.get("metadata") or {}).get("continue") or None, query["continue"]
            if status == 410 and query["continue"]:
                # An expired continue token: the API server offers one that continues from the same place
                # (no longer a consistent snapshot, which an unchanged update does not need); else start over
                # and skip what is done by name.
                offered = ((body or {}).get("metadata") or {}).get("continue") if isinstance(body, dict) else None
                query["continue"] = offered or None
                continue
            if status == 429 or status >= 500:
                self._backoff(headers)
                continue
            raise KubeError(f"listing {resource.name} at {self.client.server}{resource.list_path()} failed with "
                            f"{status}: {status_message(body)}", status)
        raise KubeError(f"listing {resource.name} kept failing with {status}: {status_message(body)}", status)

    @staticmethod
    def _page_items(body):
        # Items of a list carry neither kind nor apiVersion: a PUT names them, from the list's own.
        kind = str(body.get("kind") or "")
        kind = kind[:-4] if kind.endswith("List") else kind
        items = []
        for item in body.get("items") or []:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", body.get("apiVersion"))
            items.append(item)
        return items

    @staticmethod
    def _backoff(headers):
        try:
            delay = float((headers or {}).get("Retry-After") or 1)
        except (TypeError, ValueError):
            delay = 1.0
        time.sleep(min(max(delay, 0.1), MAX_BACKOFF))

    def rewrite(self, resource, obj, counts):
        """Write ``obj`` back unchanged; return its outcome (a counter name)."""
        metadata = obj.get("metadata") or {}
        namespace, name = metadata.get("namespace"), metadata.get("name")
        path = resource.object_path(namespace, name)
        status, body = 0, None
        for _attempt in range(MAX_ATTEMPTS):
            before = (obj.get("metadata") or {}).get("resourceVersion")
            status, body, headers = self.call("PUT", path, body=obj)
            if status in (200, 201) and isinstance(body, dict):
                after = (body.get("metadata") or {}).get("resourceVersion")
                return "already_current" if after == before else "rewritten"
            if status == 404:
                return "deleted"
            if status == 409:
                # Changed (or deleted and recreated) since it was read: write back the current version instead.
                counts["conflicts"] += 1
                status, body, headers = self.call("GET", path)
                if status == 404:
                    return "deleted"
                if status == 200 and isinstance(body, dict):
                    obj = body
                    continue
            if status == 429 or status >= 500:
                self._backoff(headers)
                continue
            break
        if len(self.failures) < MAX_FAILURES_REPORTED:
            self.failures.append({"resource": resource.name, "namespace": namespace, "name": name,
                                  "status": status, "message": status_message(body)})
        return "failed"

    def run_resource(self, resource):
        entry = self.state.resource(resource.name)
        counts = entry["counts"]
        if entry["done"]:
            return counts
        started, done_before = time.monotonic(), counts["total"]
        token = entry["continue"]
        while True:
            items, next_token, token = self.list_page(resource, token)
            entry["continue"] = token
            for item in items:
                key = object_key(item)
                # The API server lists in key order: what sorts at or before the last object done was done
                # before the interruption.
                if entry["last"] is not None and key <= entry["last"]:
                    continue
                counts["total"] += 1
                if not self.check:
                    outcome = self.rewrite(resource, item, counts)
                    counts[outcome] += 1
                    entry["last"] = key
                    self.state.save()
                self.processed += 1
                self.progress.tick(lambda: _describe(resource.name, counts, self._rate(started, counts["total"] - done_before)))
            if not next_token:
                break
            token = next_token
            entry["continue"] = token
            self.state.save()
        entry["done"] = True
        self.state.save()
        self.progress.write(_describe(resource.name, counts, self._rate(started, counts["total"] - done_before)) + ", finished")
        return counts

    @staticmethod
    def _rate(started, count):
        elapsed = time.monotonic() - started
        return count / elapsed if elapsed > 0 else 0.0

    def etcd_maintenance(self):
        params = self.params
        if not params["etcd_compact"] or self.check:
            return None
        connection = params["etcd"]
        client = client_from_params(connection)
        try:
            revision = client.revision()
            self.progress.write(f"etcd: compacting at revision {revision}")
            compacted = True
            try:
                client.compact(revision)
            except EtcdError as exc:
                # Nothing was written since the last compaction (the API server's own, or a run before).
                if "required revision has been compacted" not in str(exc):
                    raise
                compacted = False
        finally:
            client.close()
        defragmented = []
        if params["etcd_defragment"]:
            # One member at a time: each is blocked while it defragments, the others keep serving.
            for endpoint in connection["endpoints"]:
                self.progress.write(f"etcd: defragmenting {endpoint} (it serves nothing until done)")
                member = client_from_params(dict(connection, endpoints=[endpoint]), timeout=max(connection["timeout"], 300))
                try:
                    member.defragment()
                finally:
                    member.close()
                defragmented.append(endpoint)
        self.progress.write(f"etcd: {'compacted' if compacted else 'already compacted'} at {revision}, "
                            f"defragmented {', '.join(defragmented) or 'nothing'}")
        return {"compacted_revision": revision, "compacted": compacted, "defragmented": defragmented}

    def result(self, resources, complete):
        per_resource = {resource.name: dict(self.state.resource(resource.name)["counts"]) for resource in resources}
        summary = {counter: sum(counts[counter] for counts in per_resource.values()) for counter in COUNTERS}
        elapsed = time.monotonic() - self.started
        return {
            "changed": summary["rewritten"] > 0 or (self.check and summary["total"] > 0),
            "summary": summary,
            "resources": per_resource,
            "failures": self.failures,
            "resumed": self.state.resumed,
            "complete": complete,
            "elapsed_seconds": round(elapsed, 3),
            "objects_per_second": round(self.processed / elapsed, 2) if elapsed > 0 else 0.0,
            "etcd": None,
        }

    def run(self):
        params = self.params
        if params["qps"] < 0 or params["page_size"] < 1 or params["request_timeout"] < 1:
            self.fail("qps must be 0 (no limit) or more, page_size and request_timeout 1 or more")
        if params["etcd_defragment"] and not params["etcd_compact"]:
            self.fail("etcd_defragment needs etcd_compact=true: defragmenting without compacting frees nothing")
        if not params["resources"]:
            self.fail("resources is empty: name the resources to rewrite, for example [secrets]")
        try:
            self.client = KubeClient(params["kubeconfig"], params["context"], params["request_timeout"])
            resources = self.resolve(params["resources"])
            self.state = RunState(params["state_file"], self.client.server, enabled=not self.check)
            self.state.load(params["resume"])
        except KubeError as exc:
            self.fail(str(exc))
        for warning in self.state.warnings:
            self.module.warn(warning)
        self.progress.write(f"{'resuming' if self.state.resumed else 'starting'}: {', '.join(r.name for r in resources)} "
                            f"at {self.client.server}, at most {params['qps'] or 'unlimited'} requests/s")
        try:
            for resource in resources:
                self.run_resource(resource)
        except KubeError as exc:
            # The state file keeps where this run got to: running again resumes.
            result = self.result(resources, complete=False)
            self.progress.write(f"stopped: {exc}")
            self.fail(f"{exc}; the next run resumes from {params['state_file']}", **result)
        result = self.result(resources, complete=True)
        if not self.check:
            # Every object was gone through: the next run starts over (and retries what failed).
            self.state.complete()
        if result["summary"]["failed"]:
            self.progress.write(f"finished with {result['summary']['failed']} failures")
            first, count = self.failures[0], result["summary"]["failed"]
            what = "1 object could not be rewritten and is" if count == 1 else f"{count} objects could not be rewritten and are"
            self.fail(f"{what} still stored as before (first: {first['resource']} {first['namespace'] or ''}/{first['name']}: "
                      f"{first['status']} {first['message']}); fix them and run again", **result)
        self.progress.write(f"finished: {_describe('all', result['summary'])}")
        try:
            result["etcd"] = self.etcd_maintenance()
        except EtcdError as exc:
            self.fail(f"every object is rewritten, but etcd maintenance failed: {exc}", **result)
        if result["etcd"] and (result["etcd"]["compacted"] or result["etcd"]["defragmented"]):
            result["changed"] = True
        if result["etcd"] and result["etcd"]["compacted"]:
            self.module.warn("etcd was compacted: its history up to revision "
                             f"{result['etcd']['compacted_revision']} is gone; watchers that resume from an older "
                             "revision list again")
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            resources=dict(type="list", elements="str", default=["secrets"]),
            kubeconfig=dict(type="path", default=DEFAULT_KUBECONFIG),
            context=dict(type="str"),
            qps=dict(type="float", default=50),
            page_size=dict(type="int", default=500),
            request_timeout=dict(type="int", default=30),
            state_file=dict(type="path", default="/var/lib/teapot-kms/reencrypt-state.json"),
            resume=dict(type="bool", default=True),
            progress_log=dict(type="path", default="/var/log/teapot-kms/reencrypt.log"),
            progress_interval=dict(type="float", default=5),
            etcd_compact=dict(type="bool", default=False),
            etcd_defragment=dict(type="bool", default=False),
            etcd=etcd_argument_spec(),
        ),
        supports_check_mode=True,
    )
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMPORT_ERROR)
    Reencryptor(module).run()


if __name__ == "__main__":
    main()
