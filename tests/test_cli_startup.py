"""`olmo-hf` starts quietly and fast: `--version`, `--help` and argument errors are answered by olmo_hf_launcher
with olmo_hf/cli/parser.py alone, before torch, Transformers or the olmo_hf package are imported."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
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


# What the console script does for `olmo-hf ARGS...`, in a fresh interpreter; then which heavy modules it imported.
LAUNCH_AND_LIST_IMPORTS = """
import sys
import olmo_hf_launcher
sys.argv = ["olmo-hf", *sys.argv[1:]]
try:
    code = olmo_hf_launcher.main()
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print("exit", code, "imported:", sorted(m for m in ("torch", "transformers", "olmo_hf") if m in sys.modules))
"""


def launch(*args: str) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout without the last line, stderr, heavy modules imported) of the launcher given ``args``."""
    result = subprocess.run([sys.executable, "-c", LAUNCH_AND_LIST_IMPORTS, *args], capture_output=True, text=True,
                            env=cli_env(), timeout=120)
    *out, last = result.stdout.splitlines()
    words = last.split(" imported: ")
    return int(words[0].split()[1]), "\n".join(out), result.stderr, eval(words[1])  # noqa: S307 - our own list


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["convert", "--help"], ["run", "-h"]])
def test_help_is_answered_without_importing_torch_transformers_or_olmo_hf(args):
    code, out, err, imported = launch(*args)
    assert (code, imported, err) == (0, [], "")
    assert out.startswith(f"usage: olmo-hf {args[0] if args[0] != '--help' else ''}".rstrip())


@pytest.mark.parametrize("args, error", [
    (["run", "--task", "translation"],
     "olmo-hf run: error: argument --task: invalid choice: 'translation' (choose from "),
    (["run", "--max-new-tokens", "many"], "olmo-hf run: error: argument --max-new-tokens: invalid int value: 'many'"),
    (["run", "--dtype", "int4"], "olmo-hf run: error: argument --dtype: invalid choice: 'int4' (choose from "),
    (["run", "--no-such-flag"], "olmo-hf: error: unrecognized arguments: --no-such-flag"),
    (["convert", "only-src"], "olmo-hf convert: error: the following arguments are required: DST"),
    (["frobnicate"], "olmo-hf: error: argument COMMAND: invalid choice: 'frobnicate' (choose from "),
])
def test_an_argument_error_exits_2_with_usage_and_one_line_before_importing_torch(args, error):
    code, out, err, imported = launch(*args)
    assert (code, imported, out) == (2, [], "")
    assert err.startswith("usage: olmo-hf") and err.splitlines()[-1].startswith(error)  # then the choices


def test_no_command_prints_the_overview_on_stderr_and_exits_2_without_importing_torch():
    code, out, err, imported = launch()
    assert (code, imported, out) == (2, [], "")
    assert err.startswith("usage: olmo-hf [-h] [--version] COMMAND ...") and "examples:" in err


@pytest.mark.parametrize("command", [None, "run", "serve", "chat", "convert"])
def test_every_command_help_works_through_the_console_script_without_noise(command):
    """serve and chat are Transformers' own commands: their help comes from Transformers (torch is imported)."""
    args = ["--help"] if command is None else [command, "--help"]
    result = subprocess.run([olmo_hf_command(), *args], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.lower().startswith(f"usage: olmo-hf {command or ''}".rstrip())


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_launcher_parses_with_the_same_parsers_the_package_runs():
    """One source: the file the launcher loads by path builds the parsers olmo_hf.cli.main parses with (which only
    add the handlers), so their help and their parses are identical."""
    import olmo_hf_launcher
    from olmo_hf.cli import build_parser
    from olmo_hf.cli.run import run
    from olmo_hf.convert.cli import run_convert

    light, full = olmo_hf_launcher.load_parser_module().build_parser(olmo_hf.__version__), build_parser()
    assert light.format_help() == full.format_help()
    light_commands, full_commands = subcommand_parsers(light), subcommand_parsers(full)
    assert list(light_commands) == list(full_commands) == ["run", "serve", "chat", "convert"]
    for name in light_commands:
        assert light_commands[name].format_help() == full_commands[name].format_help(), name
    argv = ["run", "--model", "./m", "--task", "sentiment-analysis", "--dtype", "bf16", "--no-fast", "--seed", "3"]
    parsed, light_parsed = vars(full.parse_args(argv)), vars(light.parse_args(argv))
    assert parsed.pop("handler") is run and parsed == light_parsed
    assert vars(full.parse_args(["convert", "a", "b"]))["handler"] is run_convert


def test_the_parser_choices_are_what_the_code_accepts():
    """The parser module repeats these lists so that it imports nothing; they must not drift."""
    from olmo_hf.cli import formats, loading, parser, tasks

    assert parser.TASK_CHOICES == (*tasks.TASKS, *tasks.ALIASES)
    assert all(tasks.get_task(name) for name in parser.TASK_CHOICES)
    assert parser.FORMAT_CHOICES == ("infer", *formats.FORMATS)
    assert parser.DTYPE_CHOICES == loading.DTYPE_CHOICES == ("auto", *loading._DTYPES)


def test_the_parser_module_imports_only_the_standard_library():
    import ast

    import olmo_hf_launcher

    tree = ast.parse(Path(olmo_hf_launcher.load_parser_module().__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))
