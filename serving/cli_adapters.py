"""``seed-serve adapters``: team adapters and the teams' training data.

adapters list [--tenant T]
adapters add NAME --base MODEL --path DIR --tenant T [--default]
adapters remove NAME
adapters train --tenant T [--repo DIR] [--steps N] ... [--no-publish]
adapters evaluate --tenant T --adapter NAME
adapters data export|delete|stats --tenant T
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from serving.config import ServingConfig, load_config
from serving.errors import ConfigError, StartupError


def add_parser(commands: Any) -> None:
    adapters = commands.add_parser("adapters", help="Team adapters (LoRA) and training data.")
    adapters.add_argument(
        "--config",
        default=os.environ.get("SEED_SERVE_CONFIG"),
        help="Config whose adapters section, replica groups and keys file to use.",
    )
    sub = adapters.add_subparsers(dest="adapters_command", required=True)
    listing = sub.add_parser("list", help="Registered adapters and whose default each is.")
    listing.add_argument("--tenant", help="Only this tenant's.")
    add = sub.add_parser("add", help="Register an adapter folder (under adapters.roots).")
    add.add_argument("name")
    add.add_argument("--base", required=True, help="Served name of the model it adapts.")
    add.add_argument("--path", required=True, type=Path, help="The peft LoRA folder.")
    add.add_argument("--tenant", required=True, help="The team that owns it.")
    add.add_argument("--default", action="store_true", help="Make it the tenant's default.")
    add.add_argument("--description", default="")
    remove = sub.add_parser("remove", help="Unregister (gateways unload it; files stay).")
    remove.add_argument("name")
    train = sub.add_parser("train", help="Fine-tune a tenant's adapter on Ray; publish if better.")
    train.add_argument("--tenant", required=True)
    train.add_argument("--base", help="Base model (default: the first group with LoRA).")
    train.add_argument("--name", help="Adapter name (default: <tenant>-<time>).")
    train.add_argument("--repo", type=Path, help="A repository checkout as more training text.")
    train.add_argument("--steps", type=int, default=120)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--workers", type=int, default=1, help="Ray Train workers.")
    train.add_argument("--gpu", action="store_true", help="One GPU per worker.")
    train.add_argument("--cpus-per-worker", type=float, default=1.0)
    train.add_argument(
        "--held-out", type=float, default=0.2, help="Share of accepted suggestions held out."
    )
    train.add_argument("--no-publish", action="store_true", help="Evaluate, never publish.")
    evaluate = sub.add_parser("evaluate", help="Base vs a registered adapter, held-out data.")
    evaluate.add_argument("--tenant", required=True)
    evaluate.add_argument("--adapter", required=True)
    evaluate.add_argument("--cpus", type=float, default=1.0)
    data = sub.add_parser("data", help="A tenant's kept accepted suggestions.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    for command, text in (
        ("export", "Print every kept example (JSON lines)."),
        ("delete", "Delete everything kept for the tenant."),
        ("stats", "How many examples are kept."),
    ):
        parser = data_sub.add_parser(command, help=text)
        parser.add_argument("--tenant", required=True)
        if command == "export":
            parser.add_argument("--out", type=Path, help="File to write (default: stdout).")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, env=os.environ)
    keys_file = Path(config.auth.keys_file).expanduser()
    registry = Path(config.adapters.registry_file)
    command = args.adapters_command
    if command == "list":
        return _list(config, keys_file, args.tenant)
    if command == "add":
        return _add(config, keys_file, args)
    if command == "remove":
        return _remove(config, keys_file, args.name)
    if command == "data":
        return _data(config, args)
    if command == "train":
        return _train(config, keys_file, args)
    return _evaluate(config, registry, args)


def _list(config: ServingConfig, keys_file: Path, tenant: str | None) -> int:
    from serving.adapters import load_registry
    from serving.admission.keys import load_keys_file

    registry = load_registry(Path(config.adapters.registry_file))
    defaults: dict[str, list[str]] = {}
    for name, adapter in registry.defaults.items():
        defaults.setdefault(adapter, []).append(name)
    for name, tenant_record in load_keys_file(keys_file).tenants.items():
        if tenant_record.adapter:  # a pin in the keys file wins
            defaults.setdefault(tenant_record.adapter, []).append(name)
    print(f"{'NAME':28}  {'BASE':20}  {'TENANT':14}  {'RANK':4}  {'DEFAULT':7}  SCORES")
    for record in registry.adapters:
        if tenant and record.tenant != tenant:
            continue
        scores = ", ".join(f"{k} {v:.3f}" for k, v in record.scores.items()) or "-"
        default = "yes" if record.tenant in defaults.get(record.name, []) else "-"
        print(
            f"{record.name:28}  {record.base_model:20}  {record.tenant:14}  {record.rank:<4}  "
            f"{default:7}  {scores}"
        )
    return 0


def _add(config: ServingConfig, keys_file: Path, args: argparse.Namespace) -> int:
    from serving.adapters import AdapterRefused, add_adapter, set_default

    max_rank = config.max_lora_rank(args.base)
    try:
        record = add_adapter(
            Path(config.adapters.registry_file),
            name=args.name,
            base_model=args.base,
            path=args.path.expanduser().absolute(),
            tenant=args.tenant,
            roots=config.adapters.roots,
            max_rank=max_rank,
            description=args.description,
        )
    except AdapterRefused as exc:
        raise ConfigError("adapter", str(exc)) from None
    print(f"adapter {record.name} (rank {record.rank}) of {record.base_model} for {record.tenant}")
    if max_rank is None:
        print(
            f"warning: no replica group serves `{args.base}` with adapters (lora.enabled); "
            "the adapter is registered but cannot be served until one does",
            file=sys.stderr,
        )
    if args.default:
        set_default(Path(config.adapters.registry_file), args.tenant, record.name)
        print(f"tenant {args.tenant} now uses {record.name} for {record.base_model}")
    return 0


def _remove(config: ServingConfig, keys_file: Path, name: str) -> int:
    from serving.adapters import remove_adapter
    from serving.admission.keys import load_keys_file

    try:
        record = remove_adapter(Path(config.adapters.registry_file), name)
    except KeyError:
        raise ConfigError("adapter", f"no adapter named {name!r} is registered") from None
    for tenant, tenant_record in load_keys_file(keys_file).tenants.items():
        if tenant_record.adapter == name:
            print(
                f"warning: tenant {tenant} pins {name} in {keys_file} (tenants.{tenant}.adapter); "
                "it gets the base model until the pin is changed",
                file=sys.stderr,
            )
    print(f"adapter {name} removed (its files stay in {record.path})")
    return 0


def _data(config: ServingConfig, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from serving.adapters import TeamDataStore

    store = TeamDataStore(config.adapters.data_dir, retention_days=config.adapters.retention_days)
    store.apply_retention()
    tenant = args.tenant
    try:
        if args.data_command == "stats":
            print(f"tenant {tenant}: {store.count(tenant)} accepted suggestions kept")
            return 0
        if args.data_command == "delete":
            print(f"tenant {tenant}: {store.delete(tenant)} examples deleted")
            return 0
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        try:
            count = 0
            for example in store.examples(tenant):
                out.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")
                count += 1
        finally:
            if args.out:
                out.close()
    except ValueError as exc:
        raise ConfigError("--tenant", str(exc)) from None
    print(f"tenant {tenant}: {count} examples exported", file=sys.stderr)
    return 0


def _join_ray(config: ServingConfig) -> None:
    """The cluster the engines run on (ray.address, or the running `seed-serve
    up`), else a local Ray for this run."""
    from serving.paths import run_state_file
    from serving.ray_cluster import init_ray

    if config.ray.address:
        init_ray(address=config.ray.address, namespace="seed-serve-training")
        return
    try:
        state = json.loads(run_state_file().read_text())
    except (OSError, ValueError):
        init_ray(address=None, namespace="seed-serve-training", num_cpus=config.ray.num_cpus)
        return
    init_ray(address=state["ray_address"], namespace="seed-serve-training")


def _train(config: ServingConfig, keys_file: Path, args: argparse.Namespace) -> int:
    from serving.adapters import load_registry
    from serving.admission.keys import load_keys_file
    from serving.training.job import TrainingParams, run_training

    registry = load_registry(Path(config.adapters.registry_file))
    tenant_record = load_keys_file(keys_file).tenants.get(args.tenant)
    pinned = tenant_record.adapter if tenant_record is not None else None
    current_name = pinned or registry.defaults.get(args.tenant)
    current = registry.get(current_name) if current_name else None
    if current is not None and not Path(current.path).is_dir():
        current = None
    if pinned:
        print(
            f"note: tenant {args.tenant} pins {pinned} in the keys file; a published adapter "
            "serves it once the pin is removed",
            file=sys.stderr,
        )

    params = TrainingParams(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        rank=args.rank,
        workers=args.workers,
        use_gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        held_out_share=args.held_out,
    )
    if not 0.0 < args.held_out < 1.0:
        raise ConfigError("--held-out", f"{args.held_out} is not a share between 0 and 1")
    if args.repo is not None and not args.repo.is_dir():
        raise ConfigError("--repo", f"{args.repo} is not a folder")
    _join_ray(config)
    import ray

    try:
        record = run_training(
            config,
            tenant=args.tenant,
            current=current,
            base_model=args.base,
            name=args.name,
            repo=args.repo,
            params=params,
            publish=not args.no_publish,
        )
    except Exception as exc:
        if isinstance(exc, (ConfigError, StartupError)):
            raise
        raise StartupError(f"training failed: {exc}") from exc
    finally:
        ray.shutdown()
    print(f"run record: {record.output_dir}/run.json, loss curve: {record.loss_plot}")
    return 0 if record.published or args.no_publish else 3


def _evaluate(config: ServingConfig, registry: Path, args: argparse.Namespace) -> int:
    from serving.adapters import load_registry, update_adapter
    from serving.fim_templates import fim_template
    from serving.training.evaluate import evaluate, flat_scores
    from serving.training.examples import render
    from serving.training.job import TrainingParams, gather_examples, lora_group

    record = load_registry(registry).get(args.adapter)
    if record is None or record.tenant != args.tenant:
        raise ConfigError("--adapter", f"tenant {args.tenant} has no adapter {args.adapter!r}")
    group = lora_group(config, record.base_model)
    template = fim_template(group.engine.fim_template)
    params = TrainingParams()
    _, held = gather_examples(config, args.tenant, None, params)
    _join_ray(config)
    import ray

    try:
        remote = ray.remote(num_cpus=args.cpus)(evaluate)
        result = ray.get(
            remote.remote(
                {
                    "model_path": str(group.engine.local_model_path() or group.engine.model),
                    "adapters": {record.name: record.path},
                    "pairs": [(render(e, template), e.middle) for e in held],
                    "stops": list(template.stop) if template else [],
                    "max_len": params.max_len,
                }
            )
        )
    finally:
        ray.shutdown()
    scores = result["scores"]
    for who in ("base", record.name):
        s = scores[who]
        print(
            f"{who:28}  exact match {s['exact_match']:.3f}  edit similarity {s['edit_similarity']:.3f}"
        )
    update_adapter(registry, record.name, scores=flat_scores(scores, record.name))
    return 0
