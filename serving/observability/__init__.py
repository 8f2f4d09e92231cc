"""What the gateway tells its operators: every Prometheus metric (``metrics``),
the audit log, structured logs carrying the request id, and suggestion
tracking (which answers were shown, accepted or dismissed: ``suggestions``),
and usage records for chargeback and acceptance rates (``usage``).

A leaf beside the layers: it imports config and ``serving.engine_link``
(replica info), never the api, tasks, admission or upstream.
"""
