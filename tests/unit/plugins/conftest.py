"""Make this tree importable as ``ansible_collections.teapot.kms`` and run modules in-process."""

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from tests.harness.collection import make_importable

make_importable()


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
