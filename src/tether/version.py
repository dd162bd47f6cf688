"""tether's version, in a module of its own: code that names it (the hello, the welcome, the
CLI) imports this rather than the ``tether`` package, whose lazy public API imports the client."""

__version__ = "0.1.0"
