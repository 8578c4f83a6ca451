"""The README's two opening commands stay true."""

import re

from conftest import ROOT


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command_exactly():
    commands = readme_commands()
    assert len(commands) >= 2
    test_command = commands[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, f".ci/run must contain the README's test command: {test_command!r}"


def test_main_job_command_is_the_demo():
    assert "comboverse demo" in readme_commands()[0]
