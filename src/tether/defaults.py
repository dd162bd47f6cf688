"""tether's defaults, each written once: every module that needs one imports it from here
(no imports, so the one-shot CLI reads them for free)."""

DEFAULT_PORT = 7722  # TCP for the protocol, UDP for discovery
DEFAULT_PARALLEL = 64  # hosts a fleet works on at once
CONNECT_TIMEOUT = 10.0  # seconds to connect and finish the handshake
