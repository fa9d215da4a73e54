"""teapot.kms.encryption_config: provider order, removal only on audit evidence, idempotence, secrets kept out."""

import base64
import json
import os
import stat

import pytest
import yaml

from ansible_collections.teapot.kms.plugins.module_utils import _encryption_config as ec
from ansible_collections.teapot.kms.plugins.modules import encryption_config

# Test keys made up for these tests; they must never show up in a result.
AESCBC_SECRET = base64.b64encode(b"A" * 31 + b"1").decode()
AESCBC_SECRET_2 = base64.b64encode(b"B" * 31 + b"2").decode()
SECRETBOX_SECRET = base64.b64encode(b"S" * 31 + b"3").decode()
SECRETS = (AESCBC_SECRET, AESCBC_SECRET_2, SECRETBOX_SECRET)
OURS = {"apiVersion": "v2", "name": "teapot-kms", "endpoint": "unix:///run/teapot-kms/kms.sock", "timeout": "3s"}
BARBICAN_V1 = {"name": "barbican", "endpoint": "unix:///var/lib/kms/kms.sock", "cachesize": 1000, "timeout": "3s"}


def config_text(*entries):
    return yaml.safe_dump({"apiVersion": ec.API_VERSION, "kind": ec.KIND, "resources": list(entries)}, sort_keys=False)


def aescbc(*keys):
    return {"aescbc": {"keys": [{"name": name, "secret": secret} for name, secret in keys]}}


def providers_of(path, index=0):
    return yaml.safe_load(path.read_text())["resources"][index]["providers"]


@pytest.fixture
def paths(tmp_path):
    directory = tmp_path / "encryption"
    return {"path": directory / "config.yaml", "backup_dir": tmp_path / "backups"}


@pytest.fixture
def run(run_module, paths):
    def call(check=False, diff=False, **args):
        args.setdefault("path", str(paths["path"]))
        args.setdefault("backup_dir", str(paths["backup_dir"]))
        if check:
            args["_ansible_check_mode"] = True
        if diff:
            args["_ansible_diff"] = True
        code, result = run_module(encryption_config.main, args)
        for secret in SECRETS:
            assert secret not in json.dumps(result), "a key's secret reached the module result"
        return code, result

    return call


def write(path, text, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def test_first_run_writes_kms_then_identity_and_second_run_is_byte_stable(run, paths):
    code, first = run(header="Ansible managed: do not edit")
    assert code == 0 and first["changed"]
    path = paths["path"]
    text = path.read_bytes()
    assert text.startswith(b"# Ansible managed: do not edit\n")
    document = yaml.safe_load(text)
    assert (document["apiVersion"], document["kind"]) == ("apiserver.config.k8s.io/v1", "EncryptionConfiguration")
    assert document["resources"] == [{"resources": ["secrets"], "providers": [{"kms": OURS}, {"identity": {}}]}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first["sha256"] == ec.sha256(text.decode()) and first["previous_sha256"] is None
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns

    code, second = run(header="Ansible managed: do not edit")
    assert code == 0 and not second["changed"]
    assert path.read_bytes() == text
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)
    assert second["sha256"] == second["previous_sha256"] == first["sha256"]


def test_existing_providers_survive_in_their_order_after_kms(run, paths):
    write(paths["path"], config_text({
        "resources": ["secrets"],
        "providers": [
            {"secretbox": {"keys": [{"name": "box1", "secret": SECRETBOX_SECRET}]}},
            {"kms": BARBICAN_V1},
            aescbc(("key1", AESCBC_SECRET), ("key2", AESCBC_SECRET_2)),
            {"identity": {}},
        ]}))
    code, result = run()
    assert code == 0 and result["changed"]
    assert providers_of(paths["path"]) == [
        {"kms": OURS},
        {"secretbox": {"keys": [{"name": "box1", "secret": SECRETBOX_SECRET}]}},
        {"kms": BARBICAN_V1},
        aescbc(("key1", AESCBC_SECRET), ("key2", AESCBC_SECRET_2)),
        {"identity": {}},
    ]
    assert [p["type"] for p in result["providers"]] == ["kms", "secretbox", "kms", "aescbc", "identity"]
    assert result["providers"][3] == {"type": "aescbc", "keys": ["key1", "key2"]}
    assert result["writers"] == [{"type": "secretbox", "keys": ["box1"]}]


def test_identity_first_moves_last(run, paths):
    write(paths["path"], config_text({"resources": ["secrets"], "providers": [{"identity": {}}, aescbc(("k", AESCBC_SECRET))]}))
    run()
    assert providers_of(paths["path"]) == [{"kms": OURS}, aescbc(("k", AESCBC_SECRET)), {"identity": {}}]


def test_two_step_rollout_keeps_the_writer_first_then_makes_kms_primary(run, paths):
    write(paths["path"], config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]}))
    code, staged = run(primary=False)
    assert code == 0 and staged["changed"]
    assert providers_of(paths["path"]) == [aescbc(("key1", AESCBC_SECRET)), {"kms": OURS}, {"identity": {}}]
    code, again = run(primary=False)
    assert code == 0 and not again["changed"]

    code, primary = run(primary=True)
    assert code == 0 and primary["changed"]
    assert providers_of(paths["path"]) == [{"kms": OURS}, aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]
    # Once kms writes, the first step changes nothing any more.
    for is_primary in (False, True):
        code, result = run(primary=is_primary)
        assert code == 0 and not result["changed"]


def test_unencrypted_cluster_stages_with_identity_first(run, paths):
    code, result = run(primary=False, resources=["secrets", "configmaps"])
    assert code == 0
    assert yaml.safe_load(paths["path"].read_text())["resources"] == [
        {"resources": ["secrets", "configmaps"], "providers": [{"identity": {}}, {"kms": OURS}]}]
    assert result["writers"] == [{"type": "identity"}]


def test_entries_for_other_resources_are_kept(run, paths):
    other = {"resources": ["configmaps"], "providers": [aescbc(("cm", AESCBC_SECRET_2)), {"identity": {}}]}
    wildcard = {"resources": ["*.*"], "providers": [{"identity": {}}]}
    write(paths["path"], config_text(
        {"resources": ["secrets", "widgets.example.com"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]},
        other, wildcard))
    run(resources=["secrets"])
    resources = yaml.safe_load(paths["path"].read_text())["resources"]
    assert resources == [
        {"resources": ["secrets"], "providers": [{"kms": OURS}, aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]},
        {"resources": ["widgets.example.com"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]},
        other,
        wildcard,
    ]


def test_a_wildcard_entry_contributes_its_providers(run, paths):
    write(paths["path"], config_text({"resources": ["*.*"], "providers": [aescbc(("all", AESCBC_SECRET)), {"identity": {}}]}))
    run(resources=["secrets", "widgets.example.com"])
    resources = yaml.safe_load(paths["path"].read_text())["resources"]
    assert resources[0]["providers"] == [{"kms": OURS}, aescbc(("all", AESCBC_SECRET)), {"identity": {}}]
    assert resources[1] == {"resources": ["*.*"], "providers": [aescbc(("all", AESCBC_SECRET)), {"identity": {}}]}


def test_our_settings_are_updated_in_place(run, paths):
    run(resources=["secrets"])
    code, result = run(kms={"endpoint": "unix:///var/run/other/kms.sock", "timeout": "10s"})
    assert code == 0 and result["changed"]
    assert providers_of(paths["path"])[0] == {"kms": dict(OURS, endpoint="unix:///var/run/other/kms.sock", timeout="10s")}
    assert len(providers_of(paths["path"])) == 2


def test_previous_configuration_elsewhere_is_carried(run, paths, tmp_path):
    previous = tmp_path / "old" / "enc.yaml"
    write(previous, config_text({"resources": ["secrets"], "providers": [aescbc(("old", AESCBC_SECRET)), {"identity": {}}]}))
    code, result = run(previous_path=str(previous))
    assert code == 0
    assert providers_of(paths["path"]) == [{"kms": OURS}, aescbc(("old", AESCBC_SECRET)), {"identity": {}}]
    assert result["writers"] == [{"type": "aescbc", "keys": ["old"]}]


def test_sources_converge_nodes_to_one_file(run, paths, tmp_path):
    node_a = config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]})
    node_b = config_text({"resources": ["secrets"], "providers": [{"kms": OURS}, aescbc(("key2", AESCBC_SECRET_2)), {"identity": {}}]})
    write(paths["path"], node_b)
    code, on_b = run(sources=[node_a, node_b])
    assert code == 0 and on_b["changed"]
    other = tmp_path / "node-a.yaml"
    write(other, node_a)
    code, on_a = run(path=str(other), sources=[node_a, node_b])
    assert code == 0
    assert other.read_bytes() == paths["path"].read_bytes()
    assert providers_of(other) == [{"kms": OURS}, aescbc(("key1", AESCBC_SECRET), ("key2", AESCBC_SECRET_2)), {"identity": {}}]


def test_the_same_key_name_with_two_secrets_is_refused(run, paths):
    node_a = config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET))]})
    node_b = config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET_2))]})
    code, result = run(sources=[node_a, node_b])
    assert code == 1
    assert "aescbc key 'key1' has another secret" in result["msg"] and "nothing was changed" in result["msg"]
    assert not paths["path"].exists()


def test_splitting_an_entry_that_would_repeat_a_kms_provider_is_refused(run, paths):
    original = config_text({"resources": ["secrets", "configmaps"], "providers": [{"kms": BARBICAN_V1}, {"identity": {}}]})
    write(paths["path"], original)
    code, result = run(resources=["secrets"])
    assert code == 1
    assert "'barbican' would appear twice" in result["msg"] and "configmaps" in result["msg"]
    assert paths["path"].read_text() == original


def usage(*counts, resources=("secrets",)):
    """A result of teapot.kms.secret_encryption_info with these (type, name, count) groups in every resource."""
    groups = {f"{kind}/{name or '-'}/{'key-1' if kind == 'kms-v2' else '-'}": count for kind, name, count in counts}
    return {"changed": False, "total": sum(groups.values()), "counts": {resource: dict(groups) for resource in resources}}


@pytest.fixture
def encrypted_with_two_keys(run, paths):
    write(paths["path"], config_text({"resources": ["secrets"], "providers": [
        {"kms": OURS}, aescbc(("key1", AESCBC_SECRET), ("key2", AESCBC_SECRET_2)), {"kms": BARBICAN_V1}, {"identity": {}}]}))
    return paths["path"].read_text()


def test_removal_is_refused_while_objects_use_the_provider(run, paths, encrypted_with_two_keys):
    code, result = run(remove_providers=["aescbc:key1"],
                       audit=usage(("aescbc", "key1", 3), ("kms-v2", "teapot-kms", 40)))
    assert code == 1
    assert result["msg"].startswith("refusing to remove aescbc:key1: 3 object(s) still need it (3 secrets)")
    assert paths["path"].read_text() == encrypted_with_two_keys


@pytest.mark.parametrize("removal, kind, name", [("aescbc", "aescbc", "key2"), ("kms:barbican", "kms-v1", "barbican"),
                                                 ("identity", "identity", None)])
def test_removal_counts_every_object_of_the_provider(run, paths, encrypted_with_two_keys, removal, kind, name):
    code, result = run(remove_providers=[removal], audit=usage((kind, name, 1)))
    assert code == 1 and f"refusing to remove {removal}: 1 object(s)" in result["msg"]
    assert paths["path"].read_text() == encrypted_with_two_keys


def test_removal_with_a_zero_audit_drops_only_that_provider(run, paths, encrypted_with_two_keys):
    audit = usage(("aescbc", "key1", 0), ("aescbc", "key2", 5), ("kms-v2", "teapot-kms", 40))
    code, result = run(remove_providers=["aescbc:key1", "kms:barbican", "secretbox"], audit=audit)
    assert code == 0 and result["changed"]
    assert result["removed"] == ["aescbc:key1", "kms:barbican"] and result["already_absent"] == ["secretbox"]
    assert providers_of(paths["path"]) == [{"kms": OURS}, aescbc(("key2", AESCBC_SECRET_2)), {"identity": {}}]
    code, again = run(remove_providers=["aescbc:key1", "kms:barbican", "secretbox"], audit=audit)
    assert code == 0 and not again["changed"] and again["already_absent"] == ["aescbc:key1", "kms:barbican", "secretbox"]


def test_identity_removed_on_request_stays_removed(run, paths, encrypted_with_two_keys):
    code, result = run(remove_providers=["identity"], audit=usage(("kms-v2", "teapot-kms", 40)))
    assert code == 0 and result["removed"] == ["identity"]
    assert {"identity": {}} not in providers_of(paths["path"])
    code, again = run(remove_providers=["identity"])
    assert code == 0 and not again["changed"]
    # Without the request, identity comes back last: reading plaintext is always allowed unless refused on purpose.
    code, back = run()
    assert code == 0 and back["changed"] and providers_of(paths["path"])[-1] == {"identity": {}}


@pytest.mark.parametrize("args, message", [
    ({"remove_providers": ["aescbc:key1"]}, "refusing to remove aescbc:key1: no audit given"),
    ({"remove_providers": ["aescbc:key1"], "audit": usage(resources=["configmaps"])},
     "refusing to remove aescbc:key1: the audit did not cover secrets"),
    ({"remove_providers": ["aescbc:key1"], "audit": usage(("unparseable", None, 2))},
     "refusing to remove aescbc:key1: the audit could not classify 2 stored object(s)"),
    ({"remove_providers": ["aescbc:key1"], "audit": {"total": 3}}, "give the result of teapot.kms.secret_encryption_info"),
    ({"remove_providers": ["kms:teapot-kms"], "audit": usage()}, "cannot remove kms:teapot-kms"),
    ({"remove_providers": ["rot13"]}, "cannot remove 'rot13'"),
])
def test_removal_needs_a_covering_audit(run, paths, encrypted_with_two_keys, args, message):
    code, result = run(**args)
    assert code == 1 and message in result["msg"]
    assert paths["path"].read_text() == encrypted_with_two_keys


def test_the_provider_that_writes_now_cannot_be_removed(run, paths):
    write(paths["path"], config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]}))
    code, result = run(remove_providers=["aescbc:key1"], audit=usage(("aescbc", "key1", 0)))
    assert code == 1 and "refusing to remove aescbc:key1: it still writes new objects" in result["msg"]


def test_check_mode_changes_nothing_and_the_diff_hides_secrets(run, paths):
    original = config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET)), {"identity": {}}]})
    write(paths["path"], original, mode=0o640)
    code, result = run(check=True, diff=True)
    assert code == 0 and result["changed"]
    assert paths["path"].read_text() == original and stat.S_IMODE(paths["path"].stat().st_mode) == 0o640
    assert "secret: <redacted>" in result["diff"]["before"] and "secret: <redacted>" in result["diff"]["after"]
    assert "teapot-kms" in result["diff"]["after"] and "teapot-kms" not in result["diff"]["before"]
    assert result["sha256"] != result["previous_sha256"]


def test_a_backup_is_made_before_a_change(run, paths):
    original = config_text({"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET))]})
    write(paths["path"], original)
    code, result = run(backup=True)
    assert code == 0 and result["backup_file"]
    backup = paths["backup_dir"] / os.path.basename(result["backup_file"])
    assert backup.read_text() == original and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths["backup_dir"].stat().st_mode) == 0o700
    code, again = run(backup=True)
    assert not again["changed"] and again["backup_file"] is None


def test_a_loose_mode_is_tightened(run, paths):
    run()
    paths["path"].chmod(0o644)
    code, result = run()
    assert code == 0 and result["changed"] and stat.S_IMODE(paths["path"].stat().st_mode) == 0o600


def test_providers_written_differently_per_resource_warn(run, paths):
    write(paths["path"], config_text(
        {"resources": ["secrets"], "providers": [{"kms": OURS}, {"identity": {}}]},
        {"resources": ["configmaps"], "providers": [{"identity": {}}]}))
    code, result = run(primary=False, resources=["secrets", "configmaps"])
    assert code == 0
    assert "written by different providers" in json.dumps(result["warnings"])
    assert yaml.safe_load(paths["path"].read_text())["resources"] == [
        {"resources": ["secrets", "configmaps"], "providers": [{"kms": OURS}, {"identity": {}}]}]


BROKEN = [
    ("resources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n          keys: [{name: k, secret: "
     + AESCBC_SECRET + "\n", "not valid YAML at line"),
    ("apiVersion: v1\nkind: Pod\n", "expected apiVersion apiserver.config.k8s.io/v1 and kind EncryptionConfiguration"),
    (config_text({"resources": ["secrets"], "providers": [{"rot13": {}}]}), "unknown provider type 'rot13'"),
    (config_text({"resources": ["secrets"], "providers": [{"aescbc": {"keys": [{"name": "k"}]}}]}),
     "resources[0].providers[0].aescbc.keys[0] (k): the key has no secret"),
    (config_text({"resources": ["secrets"], "providers": [{"kms": {"name": "x"}}]}), "a kms provider needs an endpoint"),
    (config_text({"resources": ["secrets"], "providers": [{"identity": {}, "aescbc": {}}]}), "exactly one of"),
    (config_text({"resources": [], "providers": [{"identity": {}}]}), "expected a non-empty list of resource names"),
]


@pytest.mark.parametrize("text, message", BROKEN)
def test_a_file_that_cannot_be_used_is_left_alone(run, paths, text, message):
    write(paths["path"], text)
    code, result = run()
    assert code == 1 and message in result["msg"] and result["msg"].endswith("nothing was changed")
    assert paths["path"].read_text() == text


def test_the_legacy_kind_is_read_and_written_back_in_the_current_form(run, paths):
    write(paths["path"], yaml.safe_dump({"apiVersion": "v1", "kind": "EncryptionConfig", "resources": [
        {"resources": ["secrets"], "providers": [aescbc(("key1", AESCBC_SECRET))]}]}))
    code, _result = run()
    assert code == 0
    document = yaml.safe_load(paths["path"].read_text())
    assert document["kind"] == "EncryptionConfiguration"
    assert document["resources"][0]["providers"][1] == aescbc(("key1", AESCBC_SECRET))


@pytest.mark.parametrize("kms, message", [
    ({"endpoint": "/run/teapot-kms/kms.sock"}, "unix:///absolute/path"),
    ({"name": "a:b"}, "without ':'"),
    ({"timeout": "three seconds"}, "Go duration"),
])
def test_bad_options_are_refused(run, paths, kms, message):
    code, result = run(kms=kms)
    assert code == 1 and message in result["msg"] and not paths["path"].exists()


def test_redact_keeps_the_layout():
    text = "# c\nkeys:\n- name: a\n  secret: c2VjcmV0\n- {name: b, secret: 'eHh4'}\n"
    assert ec.redact(text) == "# c\nkeys:\n- name: a\n  secret: <redacted>\n- {name: b, secret: <redacted>}\n"
    assert "c2VjcmV0" not in ec.redact("keys: [{secret: c2VjcmV0\n")


@pytest.mark.parametrize("pattern, resource, expected", [
    ("secrets", "secrets", True), ("*.", "secrets", True), ("*.*", "configmaps", True),
    ("*.apps", "deployments.apps", True), ("*.apps", "secrets", False), ("configmaps", "secrets", False),
    ("widgets.example.com", "*.example.com", True), ("secrets", "*.", True),
])
def test_covers(pattern, resource, expected):
    assert ec.covers(pattern, resource) is expected
