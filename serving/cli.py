"""The ``seed-serve`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving import __version__
from serving.cli_adapters import add_parser as add_adapters_parser
from serving.cli_adapters import run as run_adapters
from serving.config import ServingConfig, dump_config, load_config
from serving.errors import ConfigError, StartupError


def _add_config_flags(parser: argparse.ArgumentParser, *, gateway_only: bool = False) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("SEED_SERVE_CONFIG"),
        help="YAML config file (default: $SEED_SERVE_CONFIG, else the embedded CPU demo).",
    )
    parser.add_argument("--host", help="gateway.host")
    parser.add_argument("--port", type=int, help="gateway.port")
    parser.add_argument("--ray-address", help="ray.address: join this Ray cluster")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "text"])
    if not gateway_only:
        parser.add_argument("--replicas", type=int, help="replica_groups[0].replicas")
        parser.add_argument("--model", help="replica_groups[0].engine.model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="Any config field, e.g. --set gateway.max_n=4 (repeatable).",
    )


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for item in args.set:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise ConfigError("--set", f"expected PATH=VALUE, got {item!r}")
        pairs.append((path.strip(), value))
    flag_paths = {
        "host": "gateway.host",
        "port": "gateway.port",
        "ray_address": "ray.address",
        "log_level": "gateway.log_level",
        "log_format": "gateway.log_format",
        "replicas": "replica_groups.0.replicas",
        "model": "replica_groups.0.engine.model",
    }
    for attr, path in flag_paths.items():
        value = getattr(args, attr, None)
        if value is not None:
            pairs.append((path, value))
    return pairs


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    return load_config(args.config, env=os.environ, overrides=_overrides(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seed-serve",
        description="Self-hosted code-assistant endpoint: vLLM replicas on Ray behind an "
        "OpenAI-compatible gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="Local Ray + engine replicas + gateway, all in one.")
    _add_config_flags(up)

    gateway = commands.add_parser(
        "gateway", help="Only the gateway, joining an existing Ray cluster."
    )
    _add_config_flags(gateway, gateway_only=True)

    config = commands.add_parser("config", help="Print the effective configuration as YAML.")
    _add_config_flags(config)
    config.add_argument(
        "--reference", action="store_true", help="Print the reference of every field (Markdown)."
    )

    demo = commands.add_parser("demo-model", help="Build the offline demo model (SmolLM2-135M).")
    demo.add_argument("--target", type=Path, help="Where to build it (default: the cache).")
    demo.add_argument("--force", action="store_true", help="Rebuild even if it exists.")

    keys = commands.add_parser("keys", help="API keys: create, list, revoke.")
    keys.add_argument(
        "--config",
        default=os.environ.get("SEED_SERVE_CONFIG"),
        help="Config whose auth.keys_file to edit (default: the embedded default's).",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="Create a key; prints the secret once.")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--owner", help="Whose key it is (usage is counted per owner).")
    create.add_argument("--expires", help="Expiry date (YYYY-MM-DD or ISO 8601, UTC).")
    for flag in ("rpm", "tpm", "max-concurrency", "max-tokens", "max-prompt-tokens", "max-n"):
        create.add_argument(f"--{flag}", type=int, help=f"Key limit: {flag}.")
    key_commands.add_parser("list", help="List keys (never secrets).")
    revoke = key_commands.add_parser("revoke", help="Revoke a key by id.")
    revoke.add_argument("key_id")

    scale = commands.add_parser(
        "scale", help="Set a replica group's size at runtime (removed replicas drain first)."
    )
    scale.add_argument("--replicas", type=int, required=True)
    scale.add_argument("--group", help="Replica group (default: the first).")
    scale.add_argument(
        "--config",
        default=os.environ.get("SEED_SERVE_CONFIG"),
        help="Config whose ray.address to use (default: the running `seed-serve up`).",
    )

    add_adapters_parser(commands)

    commands.add_parser("version", help="Print the version.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"seed-serve: config error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"seed-serve: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"seed-serve {__version__}")
        return 0
    if args.command == "keys":
        return _keys(args)
    if args.command == "scale":
        return _scale(args)
    if args.command == "adapters":
        return run_adapters(args)
    if args.command == "demo-model":
        from serving.demo_model import build_demo_model

        build_demo_model(args.target, force=args.force)
        return 0
    if args.command == "config" and args.reference:
        from serving.config_docs import config_reference

        print(config_reference(), end="")
        return 0
    config = config_from_args(args)
    if args.command == "config":
        print(dump_config(config), end="")
        return 0
    from serving.observability.logs import configure_logging
    from serving.runtime import run_gateway, run_up

    configure_logging(config.gateway.log_level, config.gateway.log_format)
    if args.command == "up":
        return run_up(config)
    return run_gateway(config)


def _scale(args: argparse.Namespace) -> int:
    import json

    from serving.paths import run_state_file
    from serving.ray_cluster import init_ray

    config = load_config(args.config, env=os.environ) if args.config else None
    if config is not None and config.ray.address:
        address, namespace, name = (
            config.ray.address,
            config.ray.namespace,
            config.ray.controller_name,
        )
    else:
        state_file = run_state_file()
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            raise StartupError(
                f"no running `seed-serve up` found ({state_file}); give --config with ray.address"
            ) from None
        address, namespace, name = (
            state["ray_address"],
            state["namespace"],
            state["controller_name"],
        )
    init_ray(address=address, namespace=namespace, log_to_driver=False)
    import ray

    try:
        controller = ray.get_actor(name, namespace=namespace)
        groups: list[dict[str, Any]] = ray.get(controller.groups_json.remote())
        group = args.group or groups[0]["group"]
        try:
            result = ray.get(controller.scale.remote(group, args.replicas))
        except ray.exceptions.RayTaskError as exc:
            raise ConfigError("--group", str(exc.cause)) from None
        print(f"group {result['group']}: {result['replicas']} replica(s)")
    finally:
        ray.shutdown()
    return 0


def _keys(args: argparse.Namespace) -> int:
    import datetime as dt

    from serving.admission.keys import create_key, load_keys_file, revoke_key

    config = load_config(args.config, env=os.environ)
    path = Path(config.auth.keys_file).expanduser()
    if args.keys_command == "create":
        expires = None
        if args.expires:
            try:
                expires = dt.datetime.fromisoformat(args.expires)
            except ValueError:
                raise ConfigError("--expires", f"{args.expires!r} is not a date") from None
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
        limits = {
            name: getattr(args, name)
            for name in (
                "rpm",
                "tpm",
                "max_concurrency",
                "max_tokens",
                "max_prompt_tokens",
                "max_n",
            )
            if getattr(args, name) is not None
        }
        try:
            record, secret = create_key(
                path,
                tenant=args.tenant,
                name=args.name,
                role=args.role,
                owner=args.owner,
                expires=expires,
                limits=limits,
            )
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            flag = "--" + str(error["loc"][-1]).replace("_", "-") if error["loc"] else "key"
            raise ConfigError(flag, f"{error['msg']} (got {error['input']!r})") from None
        print(secret)
        print(
            f"key {record.id} for tenant {record.tenant} ({record.role}) saved to {path}; "
            "the secret above is shown only now.",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "list":
        keys = load_keys_file(path)
        print(f"{'ID':12}  {'TENANT':16}  {'NAME':24}  {'ROLE':5}  {'STATE':8}  EXPIRES")
        now = dt.datetime.now(dt.UTC)
        for record in keys.keys:
            state = (
                "revoked" if record.revoked else ("expired" if record.expired(now) else "active")
            )
            expiry = record.expires.isoformat() if record.expires else "-"
            print(
                f"{record.id:12}  {record.tenant:16}  {record.name:24}  {record.role:5}  {state:8}  {expiry}"
            )
        return 0
    record = revoke_key(path, args.key_id)
    print(f"revoked key {record.id} ({record.tenant}/{record.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
