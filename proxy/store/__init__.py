"""What a sealgate object is on the backend: the object model the server and the tools share.

Async (it talks to the backend and the keyring) but no aiohttp.web: callers pass values and a
`proxy.access.authorize.Caller`, never a request.
"""
