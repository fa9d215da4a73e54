# Copyright: teapot.kms contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""WSGI entry point for the Barbican API.

Barbican 23 installs no WSGI script, and ``barbican.wsgi.api`` reads its
paste pipeline from a fixed path.  This entry point applies the PostgreSQL
shim (``teapot_barbican_pg_shim.py``, kept next to this file), empties the
OpenSSL error queue that uWSGI's TLS setup leaves behind
(``teapot_barbican_openssl.py``, next to this file too), and then builds
the API from the paste file named by ``BARBICAN_PASTE_CONFIG`` (default
``/etc/barbican/barbican-api-paste.ini``).  Serve it with, for instance,
``uwsgi --wsgi-file barbican_wsgi.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable-next=wrong-import-position
import teapot_barbican_pg_shim  # noqa: E402

teapot_barbican_pg_shim.apply()

# pylint: disable-next=wrong-import-position
import teapot_barbican_openssl  # noqa: E402

teapot_barbican_openssl.clear_error_queue()

# pylint: disable-next=wrong-import-position
from paste import deploy  # noqa: E402

PASTE_CONFIG = os.environ.get("BARBICAN_PASTE_CONFIG", "/etc/barbican/barbican-api-paste.ini")

application = deploy.loadapp(f"config:{os.path.abspath(PASTE_CONFIG)}")
