"""teapot.kms.order_key against the harness's real Keystone and Barbican: least privilege for the KMS plugin.

The key custodian (``member`` of the KMS project) orders the key-encryption
key with the playbook; the plugin's user holds only ``reader`` in that
project.  With the read ACL the playbook sets, the plugin's credentials read
the key (the real plugin daemon turns healthy with its key_id), and Barbican
answers 403 when they try to delete it, change its ACL or order a key.
"""

import sys
import uuid

import pytest
from barbicanclient import exceptions as barbican_exceptions

from tests.harness.keystone import make_session
from tests.harness.plugin_daemon import first_status
from tests.harness.playbook import PlaybookRunner

pytestmark = pytest.mark.slow

ORDER_TASK = "Order the key (once) and let only the plugin's user read it"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("order-key"))


@pytest.fixture(scope="module")
def ordered(runner, keystone, barbican):
    """Run teapot.kms.order_key twice as the key custodian, for the reader-only plugin user."""
    name = f"kek-site-{uuid.uuid4().hex[:8]}"
    inventory = {"all": {"vars": {
        "ansible_python_interpreter": sys.executable,
        "teapot_kms_keystone_url": keystone.auth_url,
        "teapot_kms_region_name": keystone.region_name,
        "keystone_kms_user": keystone.reader_plugin_user.username,
        "keystone_kms_custodian_user": keystone.key_custodian.username,
        "teapot_kms_kek_name": name,
        "teapot_kms_cluster_name": "integration-cluster",
    }}}
    secrets = {
        "keystone_kms_password": keystone.reader_plugin_user.password,
        "keystone_kms_custodian_password": keystone.key_custodian.password,
    }
    first = runner.run_playbook("teapot.kms.order_key", inventory, extra_vars=secrets)
    second = runner.run_playbook("teapot.kms.order_key", inventory, extra_vars=secrets)
    return name, first, second, secrets


def _refused(call):
    with pytest.raises(barbican_exceptions.HTTPClientError) as refused:
        call()
    return refused.value.status_code


def test_the_custodian_orders_once_and_grants_only_the_plugin(ordered, keystone, barbican):
    name, first, second, secrets = ordered
    assert first.returncode == 0, first.output
    assert second.returncode == 0, second.output
    key = first.task(ORDER_TASK)["key"]
    assert first.task(ORDER_TASK)["changed"] is True
    assert second.task(ORDER_TASK)["changed"] is False
    assert second.task(ORDER_TASK)["key"]["href"] == key["href"]
    assert key["name"] == name and key["status"] == "ACTIVE"
    plugin_id = make_session(keystone.reader_plugin_user).get_user_id()
    assert key["acl"] == {"read": {"users": [plugin_id], "project_access": False}}
    assert key["consumers"] == [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "integration-cluster"}]
    # The creator is the custodian, not the plugin.
    custodian = make_session(keystone.key_custodian)
    assert custodian.get(key["href"]).json()["creator_id"] == custodian.get_user_id()
    for secret in secrets.values():
        assert secret not in first.output and secret not in second.output


def test_the_plugin_reads_the_key_and_nothing_more(ordered, keystone, barbican, tmp_path):
    _name, first, _second, _secrets = ordered
    key = first.task(ORDER_TASK)["key"]
    plugin = barbican.client(keystone.reader_plugin_user)
    payload = plugin.secrets.get(key["href"], payload_content_type="application/octet-stream").payload
    assert len(payload) == 32

    # Delete, change the ACL, order: Barbican 23's policy refuses a reader.
    assert _refused(lambda: plugin.secrets.delete(key["href"])) == 403
    widen = plugin.acls.create(entity_ref=key["href"], users=[], project_access=True)
    assert _refused(widen.submit) == 403
    order = plugin.orders.create_key(name=f"kek-by-plugin-{uuid.uuid4().hex[:8]}", algorithm="aes", bit_length=256,
                                     mode="gcm", payload_content_type="application/octet-stream")
    assert _refused(order.submit) == 403
    # The key is still there, as the custodian left it; another member of the project cannot read it.
    still = barbican.client(keystone.key_custodian).secrets.get(key["href"])
    assert still.status == "ACTIVE"
    assert barbican.client(keystone.key_custodian).acls.get(key["href"]).read.users == [make_session(keystone.reader_plugin_user).get_user_id()]
    other = barbican.client(keystone.other_member)
    assert _refused(lambda: other.secrets.get(key["href"], payload_content_type="application/octet-stream").payload) == 403

    # The real plugin, logged in with those reader credentials, serves with the key.
    code, status, log_tail = first_status(keystone.reader_plugin_user, [key["href"]], tmp_path, keystone.region_name)
    assert (code, status["healthz"]) == (0, "ok"), log_tail
    assert status["key_id"] == key["key_id"]


def test_order_key_says_what_is_missing_without_the_custodian(runner, keystone, barbican):
    inventory = {"all": {"vars": {
        "ansible_python_interpreter": sys.executable,
        "teapot_kms_keystone_url": keystone.auth_url,
        "keystone_kms_user": keystone.reader_plugin_user.username,
    }}}
    run = runner.run_playbook("teapot.kms.order_key", inventory,
                              extra_vars={"keystone_kms_password": keystone.reader_plugin_user.password})
    assert run.returncode != 0
    assert "set keystone_kms_custodian_password" in run.output
