"""Who gets in, how much, and in what order: API keys and allow-lists
(``auth``, ``keys``), the identity provider's bearer JWTs and the console's
sign-in (``jwt_auth``), console sessions (``sessions``), rate limits
(``quotas``), the admission queue with its
lanes, per-developer fairness and supersession (``scheduler``), and the
dispatch loop that holds a queue lease while it sends a request to a replica,
retrying elsewhere before the first token (``dispatch``).

It knows no prompts and no HTTP protocol: it imports ``serving.upstream``,
``serving.observability`` (metrics), config and the leaves.
"""
