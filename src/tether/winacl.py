"""Private files on Windows, where Unix modes mean nothing (``chmod 0o600`` only clears the
read-only bit): an identity's private key is created with a protected DACL of its own that
grants full control to the current user and to SYSTEM, and to no one else; no entry is inherited
from the directory. The file is created with that security descriptor (``CreateFileW`` with
``SECURITY_ATTRIBUTES``) and without sharing, so there is no moment at which another account
could open it.

What this does not protect against: an administrator (who can take ownership of any file), a
process running as the same user, and backups or indexing services running as SYSTEM. The
other files in the identity directory (certificates, ``authorized``, ``known_hosts``) inherit the
directory's ACL: keep TETHER_HOME in the user's profile, which Windows makes private to them.
"""

from __future__ import annotations

import ctypes
import msvcrt
import os
import sys
from ctypes import wintypes

assert sys.platform == "win32"

_advapi = ctypes.WinDLL("advapi32", use_last_error=True)
_k32 = ctypes.WinDLL("kernel32", use_last_error=True)

TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1
GENERIC_READ, GENERIC_WRITE = 0x80000000, 0x40000000
CREATE_NEW = 1
FILE_ATTRIBUTE_NORMAL = 0x80
SDDL_REVISION_1 = 1
DACL_SECURITY_INFORMATION = 0x4

_k32.GetCurrentProcess.restype = wintypes.HANDLE
_k32.CreateFileW.restype = wintypes.HANDLE
_k32.CreateFileW.argtypes = (wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, wintypes.LPVOID,
                             wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE)
_k32.LocalFree.argtypes = (wintypes.HLOCAL,)
_k32.CloseHandle.argtypes = (wintypes.HANDLE,)
_advapi.OpenProcessToken.argtypes = (wintypes.HANDLE, wintypes.DWORD,
                                     ctypes.POINTER(wintypes.HANDLE))
_advapi.GetTokenInformation.argtypes = (wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID,
                                        wintypes.DWORD, wintypes.LPDWORD)
_advapi.ConvertSidToStringSidW.argtypes = (wintypes.LPVOID, ctypes.POINTER(wintypes.LPWSTR))
_advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW.argtypes = (
    wintypes.LPCWSTR, wintypes.DWORD, ctypes.POINTER(wintypes.LPVOID), wintypes.LPDWORD)
_advapi.GetFileSecurityW.argtypes = (wintypes.LPCWSTR, wintypes.DWORD, wintypes.LPVOID,
                                     wintypes.DWORD, wintypes.LPDWORD)
_advapi.ConvertSecurityDescriptorToStringSecurityDescriptorW.argtypes = (
    wintypes.LPVOID, wintypes.DWORD, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR),
    wintypes.LPDWORD)


class _SecurityAttributes(ctypes.Structure):
    _fields_ = [("nLength", wintypes.DWORD), ("lpSecurityDescriptor", wintypes.LPVOID),
                ("bInheritHandle", wintypes.BOOL)]


def _check(ok: object, what: str) -> None:
    if not ok:
        raise ctypes.WinError(ctypes.get_last_error(), f"{what} failed")


def current_user_sid() -> str:
    """The SID of the account this process runs as, e.g. ``S-1-5-21-…-1000``."""
    token = wintypes.HANDLE()
    _check(_advapi.OpenProcessToken(_k32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)),
           "OpenProcessToken")
    try:
        size = wintypes.DWORD()
        _advapi.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        _check(_advapi.GetTokenInformation(token, TOKEN_USER_CLASS, buf, size,
                                           ctypes.byref(size)), "GetTokenInformation")
        sid = ctypes.cast(buf, ctypes.POINTER(wintypes.LPVOID))[0]  # TOKEN_USER.User.Sid
        text = wintypes.LPWSTR()
        _check(_advapi.ConvertSidToStringSidW(sid, ctypes.byref(text)), "ConvertSidToStringSid")
        try:
            return str(text.value)
        finally:
            _k32.LocalFree(ctypes.cast(text, wintypes.HLOCAL))
    finally:
        _k32.CloseHandle(token)


def private_sddl() -> str:
    """A protected DACL: full control for this user and SYSTEM, nothing inherited."""
    return f"D:P(A;;FA;;;{current_user_sid()})(A;;FA;;;SY)"


def create_private(path: str | os.PathLike[str]) -> int:
    """Create ``path`` (it must not exist) readable only by this user and SYSTEM; a writable fd."""
    descriptor = wintypes.LPVOID()
    _check(_advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW(
        private_sddl(), SDDL_REVISION_1, ctypes.byref(descriptor), None),
        "ConvertStringSecurityDescriptorToSecurityDescriptor")
    try:
        attrs = _SecurityAttributes(ctypes.sizeof(_SecurityAttributes), descriptor, False)
        handle = _k32.CreateFileW(os.fspath(path), GENERIC_WRITE, 0, ctypes.byref(attrs),
                                  CREATE_NEW, FILE_ATTRIBUTE_NORMAL, None)
        if handle in (None, wintypes.HANDLE(-1).value):
            err = ctypes.get_last_error()
            if err == 80:  # ERROR_FILE_EXISTS
                raise FileExistsError(17, "exists", os.fspath(path))
            raise ctypes.WinError(err)
        return msvcrt.open_osfhandle(handle, os.O_WRONLY | os.O_BINARY)
    finally:
        _k32.LocalFree(ctypes.cast(descriptor, wintypes.HLOCAL))


def file_dacl(path: str | os.PathLike[str]) -> str:
    """A file's DACL as SDDL (``D:P(A;;FA;;;S-1-…)…``), to check what was set."""
    size = wintypes.DWORD()
    _advapi.GetFileSecurityW(os.fspath(path), DACL_SECURITY_INFORMATION, None, 0,
                             ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    _check(_advapi.GetFileSecurityW(os.fspath(path), DACL_SECURITY_INFORMATION, buf, size,
                                    ctypes.byref(size)), "GetFileSecurity")
    text = wintypes.LPWSTR()
    _check(_advapi.ConvertSecurityDescriptorToStringSecurityDescriptorW(
        buf, SDDL_REVISION_1, DACL_SECURITY_INFORMATION, ctypes.byref(text), None),
        "ConvertSecurityDescriptorToStringSecurityDescriptor")
    try:
        return str(text.value)
    finally:
        _k32.LocalFree(ctypes.cast(text, wintypes.HLOCAL))
