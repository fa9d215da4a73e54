"""Make this tree importable as ``ansible_collections.teapot.kms`` and run modules in-process."""

import json

import pytest
from ansible.module_utils import _internal
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from tests.harness.collection import make_importable

make_importable()


@pytest.fixture
def run_module(capsys, monkeypatch):
    """``run_module(main, args)`` -> ``(exit code, result dict)`` of one module run."""

    def run(main, args):
        # A module runs as on a host even when a test before it imported
        # controller code (which sends warnings to the display instead of
        # the result), and with no warnings left from an earlier run (Ansible
        # keeps them in one process-wide table and drops a repeated one).
        monkeypatch.setattr(_internal, "is_controller", False)
        warnings._global_warnings.clear()  # pylint: disable=protected-access
        warnings._global_deprecations.clear()  # pylint: disable=protected-access
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exited:
                main()
        out = capsys.readouterr().out
        return exited.value.code, json.loads(out)

    return run
