"""The client library: ``tether.connect()`` and its synchronous facade. Nothing here prints."""
