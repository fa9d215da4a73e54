"""Bootstrap pip into an empty venv for ansible-test, from PyPI.

ansible-test creates its sanity venvs without pip and bootstraps pip with a
script it downloads from a host that this project's CI cannot reach.  It runs
that script (found at ~/.ansible/test/cache/get_pip_<version>.py) with the
arguments of a ``pip install``; this stand-in does the same with the
interpreter's bundled ensurepip, then installs the pinned pip from PyPI.
"""

import runpy
import subprocess
import sys


def main():
    # ensurepip clears pip's configuration and PIP_* variables in the process
    # that runs it (a site's index or CA bundle among them): keep it apart.
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True, stdout=subprocess.DEVNULL)
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    sys.argv = ["pip", "install"] + args
    runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
