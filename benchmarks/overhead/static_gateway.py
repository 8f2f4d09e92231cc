"""BENCHMARK INSTRUMENT: the real gateway app (``build_app``) in front of a
fixed list of upstream URLs instead of Ray-managed replicas, so that its cost
can be measured against the instant upstream.

    python -m benchmarks.overhead.static_gateway --port 9000 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from serving.api.app import build_app
from serving.config import ServingConfig
from serving.engines.registry import ReplicaRegistry, StaticSource
from serving.engines.types import ReplicaInfo, ReplicaState


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--model", default="instant")
    parser.add_argument("--cpus", default=None, help="comma list of CPUs to pin to")
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    config = ServingConfig.model_validate(
        {
            "gateway": {"port": args.port, "log_level": "warning", "log_format": "text"},
            "auth": {"enabled": False, "demo_key_file": None},
            "audit": {"file": None},
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
    app = build_app(config, ReplicaRegistry(StaticSource(replicas), refresh_interval_s=5.0))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # as serving.runtime runs it
    )


if __name__ == "__main__":
    main()
