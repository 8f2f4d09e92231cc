"""The Ray side: the controller actor that owns the replicas, the replica
actor that owns one vLLM engine process (and observes its health and load),
the engine's supervisor and guard, and placement on the cluster's resources.

It imports no gateway package (``api``, ``tasks``, ``admission``,
``upstream``): only config, the leaves and ``serving.engine_link``, which it
shares with the gateway.
"""
