"""Every exit code has a help text; describe() names codes and signals."""
from p2pfed.run.exitcodes import HELP, ExitCode, describe
from p2pfed.run.node.faults import CRASH_EXIT_CODE


def test_every_exit_code_has_a_help_text():
    for code in ExitCode:
        assert HELP.get(code, "").strip(), f"{code!r} has no help text"
    assert CRASH_EXIT_CODE == ExitCode.INJECTED_CRASH


def test_describe_names_the_code_or_the_signal():
    assert describe(70).startswith("exited 70 (a crash injected")
    assert describe(-9) == "killed by SIGKILL"
    assert describe(55) == "exited 55"
