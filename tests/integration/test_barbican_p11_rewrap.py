"""The barbican role's PKCS#11 re-wrap tool on a real Barbican and SoftHSM2 token.

Keys stored under the first MKEK/HMAC labels stay readable while Barbican
runs on new labels (before the re-wrap), the tool moves every project KEK to
the new labels, a second run finds nothing left to do, and the keys read back
byte-identical afterwards, with the former master keys gone from the token:
the re-wrapped KEKs no longer need them.  A run that cannot unwrap a KEK
fails, says which, and leaves it as it was.
"""

import json
import pathlib
import re
import sqlite3
import subprocess

import pytest

from tests.integration.test_harness_barbican import order_aes256

pytestmark = pytest.mark.slow

TOOL = pathlib.Path(__file__).resolve().parents[2] / "roles" / "barbican" / "files" / "teapot_barbican_p11_rewrap.py"


def _run_tool(instance):
    return subprocess.run(
        [str(instance.venv / "bin" / "python"), str(TOOL), str(instance.conf_path)],
        capture_output=True, text=True, env=instance._env(), cwd=instance.base_dir, check=False,  # pylint: disable=protected-access
    )


def _labels(instance):
    """{kek id: (mkek label, hmac label)} of the p11 project KEKs in the database."""
    path = instance.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, plugin_meta FROM kek_data WHERE plugin_name LIKE '%P11CryptoPlugin'").fetchall()
    return {kek_id: (json.loads(meta)["mkek_label"], json.loads(meta)["hmac_label"]) for kek_id, meta in rows}


def _switch_labels(instance, mkek, hmac):
    text = instance.conf_path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^mkek_label = .*$", f"mkek_label = {mkek}", text)
    text = re.sub(r"(?m)^hmac_label = .*$", f"hmac_label = {hmac}", text)
    instance.conf_path.write_text(text, encoding="utf-8")


def _destroy_key(instance, label):
    """Delete a master key from the token through Barbican's own PKCS#11 bindings."""
    script = (
        "import sys\n"
        "from barbican.common import config\n"
        "from barbican.plugin.crypto import p11_crypto\n"
        "conf = config.new_config(); p11_crypto.register_opts(conf)\n"
        "conf(args=['--config-file', sys.argv[1]], project='barbican', default_config_files=[])\n"
        "plugin = p11_crypto.P11CryptoPlugin(conf)\n"
        "kind = {'mkek': plugin.mkek_key_type, 'hmac': plugin.hmac_key_type}[sys.argv[2]]\n"
        "session = plugin.pkcs11.get_session()\n"
        "handle = plugin.pkcs11.get_key_handle(kind, sys.argv[3], session)\n"
        "assert handle is not None, sys.argv[3]\n"
        "plugin.pkcs11.destroy_object(handle, session)\n"
    )
    kind = "mkek" if "mkek" in label else "hmac"
    subprocess.run([str(instance.venv / "bin" / "python"), "-c", script, str(instance.conf_path), kind, label],
                   check=True, env=instance._env(), cwd=instance.base_dir, capture_output=True)  # pylint: disable=protected-access


def test_rewrap_moves_every_project_kek_to_the_new_master_keys_or_fails_loudly(barbican_factory, keystone):
    instance = barbican_factory("p11_crypto", "sqlite")
    client = instance.client(keystone.plugin_user)
    stored = {}
    for name in ("rewrap-a", "rewrap-b"):
        payload = order_aes256(client, name)
        (secret,) = client.secrets.list(name=name)
        stored[secret.secret_ref] = payload
    before = _labels(instance)
    assert before and set(before.values()) == {("teapot_mkek", "teapot_hmac")}

    # New labels, new keys in the token: Barbican still reads what the former keys wrap.
    instance.stop()
    _switch_labels(instance, "teapot_mkek_2", "teapot_hmac_2")
    instance._manage("hsm", "gen_mkek")  # pylint: disable=protected-access
    instance._manage("hsm", "gen_hmac")  # pylint: disable=protected-access
    instance.start()
    client = instance.client(keystone.plugin_user)
    for ref, payload in stored.items():
        assert client.secrets.get(ref).payload == payload

    first = _run_tool(instance)
    assert first.returncode == 0, first.stderr
    assert f"{len(before)} re-wrapped, 0 already under teapot_mkek_2/teapot_hmac_2, 0 failed" in first.stdout
    assert set(_labels(instance).values()) == {("teapot_mkek_2", "teapot_hmac_2")}
    assert "wrapped_key" not in first.stdout + first.stderr

    again = _run_tool(instance)
    assert again.returncode == 0, again.stderr
    assert f"0 re-wrapped, {len(before)} already under" in again.stdout

    # Without the former keys, only the re-wrap can make the stored keys readable.
    instance.stop()
    _destroy_key(instance, "teapot_mkek")
    _destroy_key(instance, "teapot_hmac")
    instance.start()
    client = instance.client(keystone.plugin_user)
    for ref, payload in stored.items():
        assert client.secrets.get(ref).payload == payload
    assert len(order_aes256(client, "rewrap-after")) == 32

    # Another rotation whose former MKEK is lost: the tool fails, names the
    # KEKs it could not unwrap and leaves them as they were.
    after = _labels(instance)
    instance.stop()
    _switch_labels(instance, "teapot_mkek_3", "teapot_hmac_3")
    instance._manage("hsm", "gen_mkek")  # pylint: disable=protected-access
    instance._manage("hsm", "gen_hmac")  # pylint: disable=protected-access
    _destroy_key(instance, "teapot_mkek_2")
    result = _run_tool(instance)
    assert result.returncode == 1
    assert f"0 re-wrapped, 0 already under teapot_mkek_3/teapot_hmac_3, {len(after)} failed" in result.stdout
    assert "(teapot_mkek_2/teapot_hmac_2)" in result.stderr
    assert _labels(instance) == after
