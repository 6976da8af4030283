"""Pure pieces of the network edge: PROXY protocol headers and X-Forwarded-For, bytes and values in and out."""
