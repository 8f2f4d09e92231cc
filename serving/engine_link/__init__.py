"""What the Ray side (``serving.cluster``) and the gateway (``serving.upstream``)
share about an engine: the replica info the controller publishes, the parsing
of an engine's own Prometheus metrics, and the HTTP/1.1 client that talks to
a vLLM server. A leaf: it imports only ``serving.errors``-level modules, so the
Ray actors carry no gateway code and the gateway no Ray code.
"""
