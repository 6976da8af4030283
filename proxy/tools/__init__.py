"""The operator tools (rewrap, convert, copy, gc, offline encrypt/decrypt, audit, quickstart):
built on `proxy.store` and `proxy.wiring`, never on the HTTP server."""
