# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""kube-apiserver flags and hostPath volumes, set in a static pod manifest or a kubeadm ClusterConfiguration,
without I/O.  Private to this collection: no stable API.

Every edit is structural and touches only the flags and volumes it is given:
every other field stays as it was, and a document that already has them is
reported unchanged (so it is not rewritten).
"""

import copy

try:
    import yaml
except ImportError:  # the modules report missing_required_lib('PyYAML')
    yaml = None

KUBEADM_GROUP = "kubeadm.k8s.io/"
# v1beta3: extraArgs is a map; v1beta4 (kubeadm >= 1.31): a list of {name, value}, a flag may repeat.
CLUSTER_CONFIGURATION_VERSIONS = ("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4")


# The options shared by the modules that wire kube-apiserver (doc fragment teapot.kms.kube_apiserver_wiring).
WIRING_ARGUMENT_SPEC = dict(
    flags=dict(type="dict", default={}),
    volumes=dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True),
        host_path=dict(type="str", required=True),
        mount_path=dict(type="str", required=True),
        read_only=dict(type="bool", default=False),
        path_type=dict(type="str", default="DirectoryOrCreate",
                       choices=["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket"]),
    )),
)


def flag_values(flags):
    """Flag values as kube-apiserver reads them: YAML booleans become true/false, not Python's True/False."""
    return {name: ("true" if value is True else "false" if value is False else str(value)) for name, value in flags.items()}


class WiringError(ValueError):
    """The document cannot be edited safely; the message says what to fix."""


def load_yaml(text, source):
    if yaml is None:
        raise WiringError("PyYAML is required")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise WiringError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def dump_yaml(document):
    """Block style, keys in their existing order, no line wrapping: what kubeadm's own files look like."""
    return yaml.safe_dump(document, default_flow_style=False, sort_keys=False, width=10000, allow_unicode=True)


def check_volumes(volumes):
    """Validate the ``volumes`` option: name, host_path, mount_path (absolute), read_only, path_type."""
    names, mounts = set(), set()
    for index, volume in enumerate(volumes):
        where = f"volumes[{index}]"
        for field in ("name", "host_path", "mount_path"):
            if not volume.get(field):
                raise WiringError(f"{where}: {field} is required")
        for field in ("host_path", "mount_path"):
            if not volume[field].startswith("/"):
                raise WiringError(f"{where}.{field}: {volume[field]!r} is not an absolute path")
        if volume["name"] in names or volume["mount_path"] in mounts:
            raise WiringError(f"{where}: the name and the mount path must be unique")
        names.add(volume["name"])
        mounts.add(volume["mount_path"])


# --- command-line flags -----------------------------------------------------------------------------


def _flag_positions(argv, name):
    """Indexes in ``argv`` of ``--name=value`` and ``--name value`` (the index of the flag) occurrences."""
    positions = []
    for index, item in enumerate(argv):
        if not isinstance(item, str):
            continue
        if item.startswith(f"--{name}=") or item == f"--{name}":
            positions.append(index)
    return positions


def _flag_value(argv, index, name):
    item = argv[index]
    if item.startswith(f"--{name}="):
        return item.split("=", 1)[1], 1
    following = argv[index + 1] if index + 1 < len(argv) else None
    if isinstance(following, str) and not following.startswith("-"):
        return following, 2
    return "true", 1


def read_flags(lists, names):
    """The current value of each flag (the last occurrence wins, as for kube-apiserver), None when absent."""
    values = {}
    for name in names:
        values[name] = None
        for argv in lists:
            for index in _flag_positions(argv, name):
                values[name] = _flag_value(argv, index, name)[0]
    return values


def set_flags(lists, flags):
    """Set each flag once, as ``--name=value``, in the first list that has it (else the last list given).

    ``lists`` are the container's ``command`` and ``args`` lists, edited in place.  Other occurrences of a
    flag that is set are removed.  Returns whether anything changed.
    """
    changed = False
    for name, value in flags.items():
        wanted = f"--{name}={value}"
        placed = False
        for argv in lists:
            index = 0
            while True:
                positions = [p for p in _flag_positions(argv, name) if p >= index]
                if not positions:
                    break
                position = positions[0]
                _value, width = _flag_value(argv, position, name)
                if not placed and argv[position:position + width] == [wanted]:
                    placed, index = True, position + 1
                    continue
                if not placed:
                    argv[position:position + width] = [wanted]
                    placed, index = True, position + 1
                else:
                    del argv[position:position + width]
                    index = position
                changed = True
        if not placed:
            lists[-1].append(wanted)
            changed = True
    return changed


# --- static pod manifest --------------------------------------------------------------------------


def find_container(manifest, container, source):
    if not isinstance(manifest, dict) or manifest.get("kind") != "Pod":
        raise WiringError(f"{source}: not a Pod manifest (kind {manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    spec = manifest.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list):
        raise WiringError(f"{source}: the Pod has no spec.containers")
    for candidate in containers:
        if isinstance(candidate, dict) and candidate.get("name") == container:
            return candidate
    names = ", ".join(str(c.get("name")) for c in containers if isinstance(c, dict)) or "none"
    raise WiringError(f"{source}: no container named {container!r} (containers: {names}); "
                      "is this the kube-apiserver manifest?")


def _argv_lists(container, source):
    lists = []
    for field in ("command", "args"):
        value = container.get(field)
        if value is None:
            continue
        if not isinstance(value, list):
            raise WiringError(f"{source}: {container['name']}.{field} is not a list")
        lists.append(value)
    if not lists:
        raise WiringError(f"{source}: the {container['name']} container has neither command nor args")
    return lists


def manifest_flags(manifest, container, names, source):
    return read_flags(_argv_lists(find_container(manifest, container, source), source), names)


def wire_manifest(manifest, container, flags, volumes, source):
    """Set flags, hostPath volumes and mounts in a static pod manifest (in place); returns whether it changed."""
    target = find_container(manifest, container, source)
    lists = _argv_lists(target, source)
    # New flags go where the flags are: command for kubeadm's manifests, args when command is only the binary.
    flag_lists = [argv for argv in lists if any(isinstance(i, str) and i.startswith("--") for i in argv)] or lists
    changed = set_flags(flag_lists, flags)
    pod_volumes = manifest["spec"].setdefault("volumes", [])
    mounts = target.setdefault("volumeMounts", [])
    if not isinstance(pod_volumes, list) or not isinstance(mounts, list):
        raise WiringError(f"{source}: spec.volumes and volumeMounts must be lists")
    for volume in volumes:
        changed = _wire_pod_volume(pod_volumes, mounts, volume, source) or changed
    return changed


def _pod_volume(name, host_path, path_type):
    spec = {"path": host_path}
    if path_type:
        spec["type"] = path_type
    return {"hostPath": spec, "name": name}


def _wire_pod_volume(pod_volumes, mounts, wanted, source):
    by_name = {v.get("name"): v for v in pod_volumes if isinstance(v, dict)}
    mount = next((m for m in mounts if isinstance(m, dict) and m.get("mountPath") == wanted["mount_path"]), None)
    if mount is not None and mount.get("name") != wanted["name"]:
        other = by_name.get(mount.get("name"), {})
        if (other.get("hostPath") or {}).get("path") == wanted["host_path"]:
            return False  # already mounted under another name: nothing to add
        raise WiringError(
            f"{source}: {wanted['mount_path']} is already mounted from volume {mount.get('name')!r} "
            f"({(other.get('hostPath') or {}).get('path', 'not a hostPath')}); choose another path")
    changed = False
    desired_volume = _pod_volume(wanted["name"], wanted["host_path"], wanted.get("path_type", ""))
    present = by_name.get(wanted["name"])
    if present is None:
        pod_volumes.append(desired_volume)
        changed = True
    elif present.get("hostPath") != desired_volume["hostPath"] or set(present) - {"hostPath", "name"}:
        present.clear()
        present.update(desired_volume)
        changed = True
    desired_mount = {"mountPath": wanted["mount_path"], "name": wanted["name"]}
    if wanted.get("read_only"):
        desired_mount["readOnly"] = True
    if mount is None:
        for stale in [m for m in mounts if isinstance(m, dict) and m.get("name") == wanted["name"]]:
            mounts.remove(stale)
        mounts.append(desired_mount)
        changed = True
    elif _without_false_read_only(mount) != desired_mount:
        mount.clear()
        mount.update(desired_mount)
        changed = True
    return changed


# --- kubeadm ClusterConfiguration ------------------------------------------------------------------


def _api_server_section(document, source):
    if not isinstance(document, dict) or document.get("kind") != "ClusterConfiguration":
        raise WiringError(f"{source}: not a kubeadm ClusterConfiguration")
    version = document.get("apiVersion")
    if version not in CLUSTER_CONFIGURATION_VERSIONS:
        raise WiringError(f"{source}: apiVersion {version!r} is not supported (expected "
                          f"{' or '.join(CLUSTER_CONFIGURATION_VERSIONS)}); run kubeadm config migrate first")
    section = document.get("apiServer")
    if section is None:
        section = document["apiServer"] = {}
    if not isinstance(section, dict):
        raise WiringError(f"{source}: apiServer is not a mapping")
    return version, section


def cluster_configuration_flags(document, names, source):
    version, section = _api_server_section(copy.deepcopy(document), source)
    extra = section.get("extraArgs") or ({} if version.endswith("v1beta3") else [])
    if isinstance(extra, dict):
        return {name: (None if extra.get(name) is None else str(extra[name])) for name in names}
    values = {name: None for name in names}
    for item in extra:
        if isinstance(item, dict) and item.get("name") in values:
            values[item["name"]] = str(item.get("value"))
    return values


def wire_cluster_configuration(document, flags, volumes, source):
    """Set apiServer extraArgs and extraVolumes (in place); returns (apiVersion, changed)."""
    version, section = _api_server_section(document, source)
    changed = False
    if version.endswith("v1beta3"):
        extra = section.get("extraArgs")
        if extra is None:
            extra = section["extraArgs"] = {}
        if not isinstance(extra, dict):
            raise WiringError(f"{source}: apiServer.extraArgs must be a map in {version}")
        for name, value in flags.items():
            if extra.get(name) != value:
                extra[name] = value
                changed = True
    else:
        extra = section.get("extraArgs")
        if extra is None:
            extra = section["extraArgs"] = []
        if not isinstance(extra, list) or not all(isinstance(i, dict) and "name" in i for i in extra):
            raise WiringError(f"{source}: apiServer.extraArgs must be a list of name/value pairs in {version}")
        for name, value in flags.items():
            matches = [item for item in extra if item["name"] == name]
            if matches:
                if matches[0] != {"name": name, "value": value}:
                    matches[0].clear()
                    matches[0].update({"name": name, "value": value})
                    changed = True
                for duplicate in matches[1:]:
                    extra.remove(duplicate)
                    changed = True
            else:
                extra.append({"name": name, "value": value})
                changed = True
    extra_volumes = section.get("extraVolumes")
    if extra_volumes is None:
        extra_volumes = section["extraVolumes"] = []
    if not isinstance(extra_volumes, list):
        raise WiringError(f"{source}: apiServer.extraVolumes must be a list")
    for volume in volumes:
        changed = _wire_extra_volume(extra_volumes, volume, source) or changed
    if not section["extraVolumes"]:
        del section["extraVolumes"]
    return version, changed


def _without_false_read_only(item):
    """kubeadm and the API omit readOnly when it is false: compare without it."""
    return {key: value for key, value in item.items() if not (key == "readOnly" and value is False)}


def _wire_extra_volume(extra_volumes, wanted, source):
    # Keys in kubeadm's (sorted) order, readOnly omitted when false as kubeadm writes it.
    desired = {"hostPath": wanted["host_path"], "mountPath": wanted["mount_path"], "name": wanted["name"]}
    if wanted.get("path_type"):
        desired["pathType"] = wanted["path_type"]
    if wanted.get("read_only"):
        desired["readOnly"] = True
    same_mount = [v for v in extra_volumes if isinstance(v, dict) and v.get("mountPath") == wanted["mount_path"]]
    for other in same_mount:
        if other.get("name") != wanted["name"]:
            if other.get("hostPath") == wanted["host_path"]:
                return False
            raise WiringError(f"{source}: apiServer.extraVolumes already mounts {other.get('hostPath')!r} at "
                              f"{wanted['mount_path']} (volume {other.get('name')!r}); choose another path")
    present = next((v for v in extra_volumes if isinstance(v, dict) and v.get("name") == wanted["name"]), None)
    if present is None:
        extra_volumes.append(desired)
        return True
    if _without_false_read_only(present) != desired:
        present.clear()
        present.update(desired)
        return True
    return False
