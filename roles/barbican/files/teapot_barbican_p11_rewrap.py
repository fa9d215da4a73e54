"""Re-wrap Barbican's PKCS#11 project KEKs under the configured MKEK and HMAC key.

Run with Barbican's venv Python, as the barbican user:

    teapot_barbican_p11_rewrap.py /etc/barbican/barbican.conf

Barbican 23's own ``barbican-manage hsm rewrap_pkek`` cannot do it: it calls
``unwrap_key`` without the key-wrap mechanism and base64-decodes an IV that
is absent whenever ``key_wrap_generate_iv`` is false (the SoftHSM2 preset), so
it fails on every project KEK.  This does the same work through Barbican's
own P11CryptoPlugin: each project KEK whose metadata names other master-key
labels is unwrapped with the keys it names (HMAC checked first), wrapped under
the configured keys, checked by loading it back through the new metadata, and
written in its own transaction.  KEKs already under the configured keys are
skipped, so a run after an interruption finishes the job.

It prints counts and labels only (no IV, no wrapped key) and exits 1 if any
project KEK could not be re-wrapped.
"""

import base64
import json
import sys

from oslo_db.sqlalchemy import session as db_session
from sqlalchemy import orm

from barbican.common import config
from barbican.common import utils
from barbican.model import models
from barbican.plugin.crypto import p11_crypto

# What Barbican assumes for metadata written before the mechanism was recorded.
DEFAULT_KEY_WRAP_MECHANISM = "CKM_AES_CBC_PAD"


def _wrap(plugin, kek_handle):
    """The metadata of ``kek_handle`` wrapped under the configured master keys."""
    with plugin.caching_session_lock:
        session = plugin.caching_session
        mkek = plugin._get_master_key(plugin.mkek_key_type, plugin.mkek_label)  # pylint: disable=protected-access
        mkhk = plugin._get_master_key(plugin.hmac_key_type, plugin.hmac_label)  # pylint: disable=protected-access
        wrapped = plugin.pkcs11.wrap_key(mkek, kek_handle, session)
        data = wrapped["wrapped_key"] if wrapped["iv"] is None else wrapped["iv"] + wrapped["wrapped_key"]
        hmac = plugin.pkcs11.compute_hmac(mkhk, data, session)
    return {
        "iv": wrapped["iv"] and base64.b64encode(wrapped["iv"]).decode(),
        "wrapped_key": base64.b64encode(wrapped["wrapped_key"]).decode(),
        "hmac": base64.b64encode(hmac).decode(),
        "mkek_label": plugin.mkek_label,
        "hmac_label": plugin.hmac_label,
        "key_wrap_mechanism": wrapped["key_wrap_mechanism"],
    }


def _load(plugin, label, meta):
    """Unwrap a project KEK from ``meta`` (HMAC verified), bypassing the plugin's cache."""
    # The cache is keyed by the KEK's label: a cached handle would hide a bad wrap.
    with plugin.pkek_cache_lock:
        cached = plugin.pkek_cache.pop(label, None)
        if cached is not None:
            with plugin.caching_session_lock:
                plugin.pkcs11.destroy_object(cached.kek, plugin.caching_session)
    return plugin._load_kek(  # pylint: disable=protected-access
        label, meta["iv"], meta["wrapped_key"], meta["hmac"], meta["mkek_label"], meta["hmac_label"],
        meta.get("key_wrap_mechanism", DEFAULT_KEY_WRAP_MECHANISM))


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} BARBICAN_CONF")
    conf = config.new_config()
    p11_crypto.register_opts(conf)
    conf(args=["--config-file", argv[1]], project="barbican", default_config_files=[])
    plugin = p11_crypto.P11CryptoPlugin(conf)
    plugin_name = utils.generate_fullname_for(plugin)
    engine = db_session.create_engine(conf.database.connection)
    make_session = orm.sessionmaker(bind=engine)

    with make_session() as session:
        rows = [(row.id, row.kek_label) for row in
                session.query(models.KEKDatum).filter_by(plugin_name=plugin_name, deleted=False)]

    rewrapped, current, failed = 0, 0, []
    for kek_id, label in rows:
        with make_session() as session, session.begin():
            row = session.get(models.KEKDatum, kek_id)
            meta = json.loads(row.plugin_meta)
            if meta["mkek_label"] == plugin.mkek_label and meta["hmac_label"] == plugin.hmac_label:
                current += 1
                continue
            try:
                handle = _load(plugin, label, meta)
                new_meta = dict(meta, **_wrap(plugin, handle))
                _load(plugin, label, new_meta)
            except Exception as exc:  # pylint: disable=broad-except
                # The exception names PKCS#11 return codes and labels, never key material.
                failed.append(f"{kek_id} ({meta['mkek_label']}/{meta['hmac_label']}): {type(exc).__name__}: {exc}")
                session.rollback()
                continue
            row.plugin_meta = p11_crypto.json_dumps_compact(new_meta)
            rewrapped += 1
            print(f"re-wrapped project KEK {kek_id}: {meta['mkek_label']}/{meta['hmac_label']}"
                  f" -> {plugin.mkek_label}/{plugin.hmac_label}")

    print(f"project KEKs: {rewrapped} re-wrapped, {current} already under"
          f" {plugin.mkek_label}/{plugin.hmac_label}, {len(failed)} failed")
    for failure in failed:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
