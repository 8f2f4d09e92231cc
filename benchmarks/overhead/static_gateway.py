"""BENCHMARK INSTRUMENT: the real gateway process (``serving.runtime``: the
same app, server settings and event loop as ``seed-serve up``) in front of a
fixed list of upstream URLs instead of Ray-managed replicas, so that its cost
can be measured against the instant upstream.

    python -m benchmarks.overhead.static_gateway --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import os

from serving.config import ServingConfig
from serving.engine_link.replica_info import ReplicaInfo, ReplicaState
from serving.runtime import run_event_loop, serve_gateway
from serving.upstream.registry import ReplicaRegistry, StaticSource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--model", default="instant")
    parser.add_argument("--cpus", default=None, help="comma list of CPUs to pin to")
    parser.add_argument(
        "--keys-file", help="API keys on (this keys file; quotas apply), else auth off"
    )
    parser.add_argument("--audit-file", help="the audit log on (this file), else off")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    config = ServingConfig.model_validate(
        {
            "gateway": {
                "host": "127.0.0.1",
                "port": args.port,
                "log_level": "warning",
                "log_format": "text",
                "drain_timeout_s": 0,
            },
            "auth": {"enabled": False, "demo_key_file": None}
            if args.keys_file is None
            else {"keys_file": args.keys_file, "demo_key_file": None},
            "audit": {"file": args.audit_file},
            "replica_groups": [
                {
                    "name": "instant",
                    "engine": {
                        "model": "instant",
                        "served_model_name": args.model,
                        "device": "cpu",
                    },
                }
            ],
        }
    )
    replicas = [
        ReplicaInfo(
            replica_id=f"instant-{i}",
            group="instant",
            model=args.model,
            state=ReplicaState.READY,
            url=url,
            max_model_len=4096,
        )
        for i, url in enumerate(args.upstream)
    ]
    registry = ReplicaRegistry(StaticSource(replicas), refresh_interval_s=5.0)
    raise SystemExit(run_event_loop(serve_gateway(config, registry)))


if __name__ == "__main__":
    main()
