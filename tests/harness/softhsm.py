"""A private SoftHSM2 token for one Barbican instance.

SoftHSM reads its configuration from ``SOFTHSM2_CONF``; each token here gets
its own configuration file and token directory, so instances never share key
material by accident.  The slot id SoftHSM assigns is random: Barbican finds
the token by its label.
"""

import os
import pathlib
import secrets
import subprocess

SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


class SoftHSMToken:
    """One initialised SoftHSM2 token (label, user PIN, config file)."""

    def __init__(self, base_dir, label):
        self.base_dir = pathlib.Path(base_dir)
        self.label = label
        self.conf_path = self.base_dir / "softhsm2.conf"
        self.token_dir = self.base_dir / "tokens"
        self.library_path = SOFTHSM_LIBRARY
        self.pin = secrets.token_hex(8)
        self._so_pin = secrets.token_hex(8)

    def env(self):
        """Environment entries every process using this token needs."""
        return {"SOFTHSM2_CONF": str(self.conf_path)}

    def initialise(self):
        """Write the configuration and create the token; return self."""
        if not pathlib.Path(self.library_path).exists():
            raise RuntimeError(f"{self.library_path} is missing: install the Debian package softhsm2")
        self.token_dir.mkdir(parents=True, exist_ok=True)
        self.token_dir.chmod(0o700)
        self.conf_path.write_text(
            f"directories.tokendir = {self.token_dir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n",
            encoding="utf-8",
        )
        env = dict(os.environ, **self.env())
        # A failure reports softhsm2-util's output, never the command line with the PINs.
        result = subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", self.label, "--so-pin", self._so_pin, "--pin", self.pin],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"softhsm2-util --init-token --label {self.label} failed: {result.stdout}{result.stderr}")
        return self
