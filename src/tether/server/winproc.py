"""Windows processes for ``tether serve``: what a command line is, how a tree dies, which code page
its output is in. Used only when ``sys.platform == "win32"``; the Unix path is ``server/exec.py``.

- A one-string command runs as ``%COMSPEC% /d /s /c "COMMAND"`` (cmd.exe: ``/s`` makes it strip
  exactly the outer quotes, ``/d`` skips AutoRun), the command line given to CreateProcess as is;
  several words are an argv, joined with CreateProcess's quoting (``subprocess.list2cmdline``).
- Every command is started suspended, put in a Job Object of its own (``KILL_ON_JOB_CLOSE``) and
  only then resumed, so no grandchild can escape before the job holds it. Killing a command
  (timeout, abandon, disconnect, a forwarded signal, the leftovers after it exits) is
  ``TerminateJobObject``: the whole tree, at once (Windows has no SIGTERM to ask first).
- Output is raw bytes; the encoding announced is the console code page (``GetConsoleOutputCP``,
  else the OEM code page): what cmd.exe's own commands write into a pipe, cp936 on a Chinese
  Windows.
- Exit codes are 32-bit unsigned on Windows (``0xC0000005``, an access violation, is
  3221225477); ``exit`` carries them unchanged as ``status``. A process the server killed
  reports the signal that stood for the kill (KILL on timeout or abandon, the forwarded one
  otherwise), as on Unix.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from ctypes import wintypes

assert sys.platform == "win32"

_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
_ntdll = ctypes.WinDLL("ntdll")

CREATE_SUSPENDED = 0x00000004
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
JOB_OBJECT_LIMIT_ACTIVE_PROCESS = 0x00000008
JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x00000100
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
JOB_OBJECT_BASIC_ACCOUNTING_INFORMATION_CLASS = 1
# The exit code a job's processes get when tether kills them (what a Windows user sees of it).
KILLED_EXIT_CODE = 1


class _IoCounters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", wintypes.DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", wintypes.DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", wintypes.DWORD),
        ("SchedulingClass", wintypes.DWORD),
    ]


class _ExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class _Accounting(ctypes.Structure):
    _fields_ = [
        ("TotalUserTime", ctypes.c_int64),
        ("TotalKernelTime", ctypes.c_int64),
        ("ThisPeriodTotalUserTime", ctypes.c_int64),
        ("ThisPeriodTotalKernelTime", ctypes.c_int64),
        ("TotalPageFaultCount", wintypes.DWORD),
        ("TotalProcesses", wintypes.DWORD),
        ("ActiveProcesses", wintypes.DWORD),
        ("TotalTerminatedProcesses", wintypes.DWORD),
    ]


_kernel32.CreateJobObjectW.restype = wintypes.HANDLE
_kernel32.CreateJobObjectW.argtypes = (wintypes.LPVOID, wintypes.LPCWSTR)
_kernel32.SetInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                              wintypes.DWORD)
_kernel32.QueryInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                                wintypes.DWORD, wintypes.LPDWORD)
_kernel32.AssignProcessToJobObject.argtypes = (wintypes.HANDLE, wintypes.HANDLE)
_kernel32.TerminateJobObject.argtypes = (wintypes.HANDLE, wintypes.UINT)
_kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
_kernel32.TerminateProcess.argtypes = (wintypes.HANDLE, wintypes.UINT)
_ntdll.NtResumeProcess.argtypes = (wintypes.HANDLE,)
_ntdll.NtResumeProcess.restype = ctypes.c_long


def _check(ok: object) -> None:
    if not ok:
        raise ctypes.WinError(ctypes.get_last_error())


def console_encoding() -> str:
    """The code page cmd.exe writes its output in: the console's, else the system OEM one."""
    cp = _kernel32.GetConsoleOutputCP() or _kernel32.GetOEMCP()
    return f"cp{cp}" if cp and cp != 65001 else "utf-8"


def comspec() -> str:
    """cmd.exe, as %COMSPEC% names it."""
    return os.environ.get("COMSPEC") or os.path.join(
        os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "cmd.exe")


def command_line(argv: list[str], shell: bool) -> str:
    """The CreateProcess command line: cmd.exe's for one string, MSVCRT quoting for an argv."""
    if shell:
        return f'"{comspec()}" /d /s /c "{argv[0]}"'
    return subprocess.list2cmdline(argv)


class Job:
    """A Job Object that kills every process in it when it is closed or terminated.

    The server's resource limits become the job's: ``nproc`` caps the processes alive in this
    command's tree at once (RLIMIT_NPROC counts the user's on Unix), ``memory`` each process's
    committed memory (RLIMIT_AS is its address space). Wine accepts both without enforcing them,
    so they are untested here (README, "tether on Windows")."""

    def __init__(self, nproc: int = 0, memory: int = 0) -> None:
        handle = _kernel32.CreateJobObjectW(None, None)
        _check(handle)
        self.handle: int | None = handle
        info = _ExtendedLimits()
        flags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if nproc:
            flags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS
            info.BasicLimitInformation.ActiveProcessLimit = nproc
        if memory:
            flags |= JOB_OBJECT_LIMIT_PROCESS_MEMORY
            info.ProcessMemoryLimit = memory
        info.BasicLimitInformation.LimitFlags = flags
        _check(_kernel32.SetInformationJobObject(
            handle, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, ctypes.byref(info),
            ctypes.sizeof(info)))

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Put a suspended process in the job, then let it run."""
        handle = int(proc._handle)  # type: ignore[attr-defined]
        _check(_kernel32.AssignProcessToJobObject(self.handle, handle))
        status = _ntdll.NtResumeProcess(handle)
        if status < 0:
            raise OSError(f"cannot resume the command (NTSTATUS {status & 0xFFFFFFFF:#x})")

    def active(self) -> int:
        """How many processes of the job still run."""
        if self.handle is None:
            return 0
        info = _Accounting()
        _check(_kernel32.QueryInformationJobObject(
            self.handle, JOB_OBJECT_BASIC_ACCOUNTING_INFORMATION_CLASS, ctypes.byref(info),
            ctypes.sizeof(info), None))
        return int(info.ActiveProcesses)

    def kill(self) -> None:
        """Terminate every process in the job (the whole tree)."""
        if self.handle is not None:
            _kernel32.TerminateJobObject(self.handle, KILLED_EXIT_CODE)

    def close(self) -> None:
        if self.handle is not None:
            self.kill()
            _kernel32.CloseHandle(self.handle)
            self.handle = None


def spawn(argv: list[str], *, shell: bool, cwd: str, env: dict[str, str], stdin: bool,
          nproc: int = 0, memory: int = 0) -> tuple[subprocess.Popen[bytes], Job]:
    """Start a command suspended in a new job, with pipes for stdout and stderr (and stdin)."""
    job = Job(nproc, memory)
    try:
        proc = subprocess.Popen(
            command_line(argv, shell), cwd=cwd, env=env, bufsize=0,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            creationflags=CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW,
        )
    except BaseException:
        job.close()
        raise
    try:
        job.adopt(proc)
    except BaseException:
        _kernel32.TerminateProcess(int(proc._handle), KILLED_EXIT_CODE)  # type: ignore[attr-defined]
        job.close()
        proc.wait()
        raise
    return proc, job
