"""Make this tree importable as ``ansible_collections.teapot.kms`` and run modules in-process."""

import hashlib
import json
import sys

import pytest
from ansible.module_utils.testing import patch_module_args

from tests.harness.cache import cache_dir
from tests.harness.playbook import REPO

# Per checkout, so that two checkouts sharing one cache never import each other's tree.
_ROOT = cache_dir("unit-collections", hashlib.sha256(str(REPO).encode()).hexdigest()[:12])
_LINK = _ROOT / "ansible_collections" / "teapot" / "kms"
_LINK.parent.mkdir(parents=True, exist_ok=True)
if not _LINK.is_symlink():
    _LINK.symlink_to(REPO)
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture
def run_module(capsys):
    """``run_module(main, args)`` -> ``(exit code, result dict)`` of one module run."""

    def run(main, args):
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exited:
                main()
        out = capsys.readouterr().out
        return exited.value.code, json.loads(out)

    return run
