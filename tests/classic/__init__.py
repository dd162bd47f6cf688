"""The classic tutorial protocol's tests: a package, so that its conftest never shadows
tests/conftest.py for a module that imports from ``conftest``."""
