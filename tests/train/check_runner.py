"""`llmasr check` run in the test's process, for the check-command tests (a command: llmasr.testing, a library
package, may not import it)."""

from llmasr.commands.check import main


def run_check(capsys, *argv):
    """`llmasr check ARGV` run in this process: (exit code, stdout, stderr), read from pytest's `capsys`."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
