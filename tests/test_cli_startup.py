"""`olmo-hf` starts quietly, and `--version` without importing torch (olmo_hf_launcher)."""

import subprocess
import sys

from test_cli_run import cli_env, olmo_hf_command

import olmo_hf

VERSION_WITHOUT_TORCH = """
import sys
import olmo_hf_launcher
sys.argv = ["olmo-hf", "--version"]
code = olmo_hf_launcher.main()
print(code, "torch" in sys.modules, "olmo_hf" in sys.modules)
"""


def test_version_is_answered_without_importing_torch_or_olmo_hf():
    result = subprocess.run([sys.executable, "-c", VERSION_WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == [f"olmo-hf {olmo_hf.__version__}", "0 False False"], result.stderr
    assert result.stderr == ""


def test_help_prints_no_library_noise():
    result = subprocess.run([olmo_hf_command(), "run", "--help"], capture_output=True, text=True, env=cli_env(),
                            timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("usage: olmo-hf run")
    assert result.stderr == ""
