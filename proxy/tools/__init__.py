"""The operator tools (rewrap, convert, copy, gc, offline encrypt/decrypt, audit, quickstart's
set-up): built on `proxy.store`, `proxy.wiring` and the keyrings, never on the HTTP server."""
