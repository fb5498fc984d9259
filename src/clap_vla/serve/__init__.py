"""`clap serve`: a websocket policy server speaking openpi's client protocol, and a client for it.

    protocol.py  the wire format (openpi's msgpack-numpy) with a decoder hardened for untrusted input
    validate.py  requests and replies checked against the Observation contract (types.py)
    server.py    the asyncio server: metadata first, one reply per observation, API key, shared model
    client.py    PolicyClient (synchronous) and RemotePolicy (a rollout policy backed by a server)

Importing this package is light; websockets is imported where a server or client starts.
"""
