"""The collection's own module_utils, imported from this checkout.

The stand-in reads and writes stored values with the very code the modules
use (``plugins/module_utils/_kms_storage.py``): one parser for the format, not
two.  The repository root is the collection root, so the files are found at
``plugins/module_utils`` next to ``tests/``.
"""

import importlib
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[3]


def module_util(name):
    """Import ``plugins/module_utils/<name>.py`` of this checkout."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    return importlib.import_module(f"plugins.module_utils.{name}")
