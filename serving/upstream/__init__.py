"""The gateway's view of the engines: the replica registry (refreshed from the
controller, off the request path), the routing policies that pick a replica,
the engine client (over a transport: the HTTP/1.1 pool in production, a
scripted engine in tests), the one SSE reader, and the engines' own metrics.

It knows no tenants, prompts or HTTP protocols: it imports only config, the
leaves and ``serving.engine_link``.
"""
