"""procs.run(): the harness's one way to run a command to completion."""

import io
import sys

import pytest

from tests.harness.procs import CommandError, run


def test_run_returns_stdout_and_copies_stderr_to_the_log():
    log = io.StringIO()
    out = run([sys.executable, "-c", "import sys; print('out'); print('warning', file=sys.stderr)"], log)
    assert out == "out\n"
    assert log.getvalue() == "warning\n"


def test_run_failure_names_the_command_and_shows_its_output(tmp_path):
    script = "import sys; print('partial'); sys.exit('broken: ' + open('reason').read())"
    (tmp_path / "reason").write_text("disk full", encoding="utf-8")
    with pytest.raises(CommandError) as error:
        run([sys.executable, "-c", script], cwd=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{sys.executable} -c {script} exited with 1:")
    assert "partial" in message
    assert "broken: disk full" in message
