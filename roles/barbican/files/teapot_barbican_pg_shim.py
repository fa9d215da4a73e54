# Copyright: teapot.kms contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make Barbican's crypto store work on PostgreSQL.

Barbican's store_crypto plugin assigns ``bytes`` (base64 text, already
ASCII) to two ``Text`` columns: ``encrypted_data.cypher_text`` and
``kek_data.plugin_meta``.  psycopg adapts ``bytes`` as ``bytea``, PostgreSQL
casts that to text as ``\\x<hex>``, and Barbican later reads the hex string
back: the project KEK no longer decrypts (``cryptography.fernet.InvalidToken``
on the next order) and payloads fail with ``Invalid base64``.

``apply()`` gives exactly those two columns a type that binds ``bytes`` as
ASCII text on PostgreSQL.  On other databases it binds values unchanged.
Rows written before the shim (``\\x`` followed by hex digits, which no base64
or JSON value can start with) read back as the text they were meant to be.
"""

import binascii
import re

from sqlalchemy import types

_HEX_BYTEA = re.compile(r"^\\x(?:[0-9a-fA-F]{2})+$")

# (model class name, column name) of every Text column store_crypto fills with bytes.
AFFECTED_COLUMNS = (
    ("EncryptedDatum", "cypher_text"),
    ("KEKDatum", "plugin_meta"),
)


class AsciiText(types.TypeDecorator):
    """Text that accepts ASCII ``bytes`` and stores them as text."""

    impl = types.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if dialect.name == "postgresql" and isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("ascii")
        return value

    def process_result_value(self, value, dialect):
        if dialect.name == "postgresql" and isinstance(value, str) and _HEX_BYTEA.match(value):
            try:
                return binascii.unhexlify(value[2:]).decode("ascii")
            except (binascii.Error, UnicodeDecodeError):
                return value
        return value


def apply(models=None):
    """Switch the affected columns of Barbican's models to AsciiText; return their names.

    Call it before Barbican runs its first query (for instance at the top of
    the WSGI entry point).  Calling it again changes nothing.
    """
    if models is None:
        # pylint: disable-next=import-outside-toplevel
        from barbican.model import models as barbican_models
        models = barbican_models
    patched = []
    for class_name, column_name in AFFECTED_COLUMNS:
        column = getattr(models, class_name).__table__.c[column_name]
        if not isinstance(column.type, AsciiText):
            column.type = AsciiText()
        patched.append(f"{column.table.name}.{column.name}")
    return patched
