"""The Windows server and client, run by the Windows CPython under Wine (winpy.py)."""
