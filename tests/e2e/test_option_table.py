"""One option table (tether.cli.options) makes both parsers of ``tether run``: the one-shot fast
parser and the click command. The same arguments must give the same RunOptions from both, and
every option in the table must exist in click's ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether.cli import options as table
from tether.cli.options import RUN_OPTIONS, fast_parse
from tether.cli.shared import RunOptions

FORMS = [
    ["h", "--", "ls", "-l"],
    ["h", "true"],
    ["-p7000", "-n", "--timeout=2.5", "h", "x"],
    ["--port", "7000", "--", "h", "--", "x"],
    ["--cwd", "-dir-", "h", "--", "-h"],
    # tether's options between HOST and the command, as ssh reads them (issue 14, item 5)
    ["h", "-p", "7788", "true"],
    ["h", "-n", "--env", "A=1", "--timeout=2", "--", "ls", "-l"],
    ["-p", "1", "h", "--port=2", "ls", "-p", "3"],
    ["--", "h", "-p", "4", "--", "--", "x"],
    ["--accept-new", "--plaintext", "--encoding", "latin-1", "h", "a", "b"],
    ["--env", "A=1", "--env=B=2=3", "--env", "C=", "h", "env"],
    ["--home", "/somewhere/else", "--no-stdin", "h", "x"],
    ["-p", "1", "--cwd=/", "--timeout", "0.5", "host.example", "--", "sh", "-c", "exit 3"],
]


def click_parse(args: list[str], monkeypatch: pytest.MonkeyPatch) -> RunOptions:
    """What the click command hands to the run (the run itself replaced by a recorder)."""
    from tether.cli import run as run_module
    from tether.cli.main import cli

    seen: list[RunOptions] = []

    def record(opts: RunOptions) -> int:
        seen.append(opts)
        return 0

    monkeypatch.setattr(run_module, "run_main", record)
    assert cli.main(["run", *args], prog_name="tether", standalone_mode=False) == 0
    (opts,) = seen
    return opts


def fields(opts: RunOptions | None) -> dict[str, Any]:
    assert opts is not None
    return dict(vars(opts))


@pytest.mark.parametrize("args", FORMS)
def test_both_parsers_agree(args: list[str], monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))  # no hosts.toml: a name is an address
    assert fields(fast_parse(args)) == fields(click_parse(args, monkeypatch))


def test_home_comes_from_the_environment_in_both(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))
    fast = fields(fast_parse(["h", "x"]))
    assert fast["home"] == str(tmp_path)
    assert fast == fields(click_parse(["h", "x"], monkeypatch))


@pytest.mark.parametrize("args", [["--keepalive", "3", "h", "x"], ["--parallel", "2", "h", "x"],
                                  ["-p", "x7", "h", "x"], ["--timeout"], ["--help"]])
def test_what_the_fast_parser_leaves_to_click(args: list[str]) -> None:
    assert fast_parse(args) is None


def test_click_has_every_option_of_the_table() -> None:
    from tether.cli.main import run

    click_names = {name for param in run.params for name in param.opts}
    for opt in RUN_OPTIONS:
        assert set(opt.names) <= click_names, opt.names
    fast_only = {opt.dest for opt in RUN_OPTIONS if not opt.fast}
    assert fast_only == {"keepalive"}  # the blocking client does not ping


def test_a_new_option_reaches_both_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is the only place run's options are written: an option added to it is parsed
    by the fast parser at once (and click's decorator is made from the same list)."""
    extra = table.Option(("--cwd-too",), "cwd")
    opts = fast_parse(["--cwd-too", "/x", "h", "y"], (*RUN_OPTIONS, extra))
    assert opts is not None and opts.cwd == "/x"
