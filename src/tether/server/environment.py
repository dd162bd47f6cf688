"""The environment a peer's command starts with: a login-like one, as sshd gives, never the
server's own (which may hold a virtualenv's PATH, tokens, or the server's TETHER_HOME).

In order, later ones winning: HOME, USER, LOGNAME and SHELL of the account the command runs as
(the server's, or in a privilege-separated worker the mapped one), the default PATH ``login``
gives that account (root's has the sbin directories), the locale of the server (LANG, LANGUAGE
and LC_*), TZ, the variables ``serve --pass-env`` names (when the server has them), TERM for
shells, then the client's ``--env``.
Also owns the shell a one-string command runs with: the account's login shell, or /bin/sh when
that is ``nologin``, ``false`` or missing (an account for services still runs commands).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Mapping

USER_PATH = "/usr/local/bin:/usr/bin:/bin"  # login's ENV_PATH on Debian and Fedora
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # its ENV_SUPATH
FALLBACK_SHELL = "/bin/sh"
NO_LOGIN = frozenset({"nologin", "false"})  # basenames of shells that refuse every command
LOCALE_NAMES = frozenset({"LANG", "LANGUAGE", "TZ"})


def _account() -> tuple[str, str, str]:
    """(user name, home, login shell) of the account the server runs as."""
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return str(uid), os.environ.get("HOME", "/"), ""
    return entry.pw_name, entry.pw_dir, entry.pw_shell


def login_shell() -> str:
    """The account's login shell, as ssh uses it; /bin/sh when it has none, cannot be run, or
    is one that refuses to run anything (``nologin``, ``false``)."""
    shell = _account()[2]
    if not shell or os.path.basename(shell) in NO_LOGIN or not os.access(shell, os.X_OK):
        return FALLBACK_SHELL
    return shell


def default_path() -> str:
    """The PATH a login gives the account this process runs as."""
    return ROOT_PATH if os.getuid() == 0 else USER_PATH


def login_environment(pass_env: Iterable[str] = (), client_env: Mapping[str, str] | None = None,
                      *, term: str | None = None,
                      server_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one command (``term``: a shell's TERM; ``client_env``: ``--env``)."""
    source = os.environ if server_env is None else server_env
    user, home, _ = _account()
    env = {"HOME": home, "USER": user, "LOGNAME": user, "SHELL": login_shell(),
           "PATH": default_path()}
    for name, value in source.items():
        if name in LOCALE_NAMES or name.startswith("LC_"):
            env[name] = value
    for name in pass_env:
        if name in source:
            env[name] = source[name]
    if term is not None:
        env["TERM"] = term
    env.update(client_env or {})
    return env
