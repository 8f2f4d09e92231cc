"""``seed-serve adapters train``: one tenant's adapter, from data to published.

1. Examples: the tenant's accepted suggestions (and a repository checkout, if
   given) in the model's FIM format; a stable held-out share of the accepted
   ones for evaluation.
2. The fine-tune: Ray Train's TorchTrainer runs ``lora.train_loop_per_worker``
   on the cluster (GPU workers in production, CPU workers here), reporting
   checkpoints; progress lines reach this console.
3. Evaluation as a Ray task: the base model, the tenant's current adapter (if
   any) and the new one on the held-out examples.
4. A run record (``run.json``: data sizes, steps, loss curve, scores, the
   decision) and the loss curve as ``loss.png``, beside the adapter.
5. Publishing: registered and made the tenant's default only when better than
   the base model and the current adapter; otherwise kept aside, and why.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.adapters import (
    AdapterRecord,
    AdapterRefused,
    TeamDataStore,
    add_adapter,
    set_default,
)
from serving.config import ReplicaGroupConfig, ServingConfig
from serving.errors import ConfigError
from serving.fim_templates import fim_template
from serving.training.evaluate import flat_scores
from serving.training.examples import FimExample, from_repository, from_team_data, render, split

MIN_HELD_OUT = 3


@dataclass
class TrainingParams:
    """How the adapter is trained (the CLI's flags)."""

    steps: int = 120
    batch_size: int = 8
    learning_rate: float = 1e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_len: int = 512
    held_out_share: float = 0.2
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0


@dataclass
class RunRecord:
    tenant: str
    adapter: str
    base_model: str
    model_path: str
    output_dir: str
    started: str
    examples: dict[str, int]
    params: dict[str, Any]
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    decision: str = ""
    loss_plot: str = ""


def lora_group(config: ServingConfig, base_model: str | None) -> ReplicaGroupConfig:
    """The replica group that serves ``base_model`` with adapters (the first
    LoRA group when none is named)."""
    groups = [g for g in config.replica_groups if g.lora.enabled]
    if base_model is not None:
        groups = [g for g in groups if g.engine.served_model_name == base_model]
    if not groups:
        which = f"`{base_model}`" if base_model else "any model"
        raise ConfigError(
            "replica_groups[].lora.enabled",
            f"no replica group serves {which} with adapters; enable lora on its group",
        )
    return groups[0]


def gather_examples(
    config: ServingConfig, tenant: str, repo: Path | None, params: TrainingParams
) -> tuple[list[FimExample], list[FimExample]]:
    store = TeamDataStore(config.adapters.data_dir, retention_days=config.adapters.retention_days)
    store.apply_retention()
    accepted = from_team_data(store.examples(tenant))
    extra = from_repository(repo, seed=params.seed) if repo is not None else []
    train, held = split(accepted + extra, params.held_out_share)
    if len(held) < MIN_HELD_OUT:
        raise ConfigError(
            "--tenant",
            f"tenant {tenant!r} has {len(accepted)} accepted suggestions kept; at least "
            f"{MIN_HELD_OUT} must be held out to judge an adapter (about "
            f"{round(MIN_HELD_OUT / params.held_out_share)} in all). Collect more "
            f"(tenants.{tenant}.training_data: collect).",
        )
    return train, held


def run_training(
    config: ServingConfig,
    *,
    tenant: str,
    current: AdapterRecord | None = None,
    base_model: str | None = None,
    name: str | None = None,
    repo: Path | None = None,
    params: TrainingParams | None = None,
    publish: bool = True,
    say: Callable[[str], None] = print,
) -> RunRecord:
    """Train, evaluate and (if better) publish ``tenant``'s adapter: better
    than the base model and than ``current`` (the tenant's adapter now);
    publishing registers it and makes it the tenant's default. Needs
    Ray initialised by the caller (a cluster joined, or a local one)."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from serving.training.evaluate import evaluate
    from serving.training.lora import train_loop_per_worker

    params = params or TrainingParams()
    group = lora_group(config, base_model)
    engine = group.engine
    if params.rank > group.lora.max_lora_rank:
        raise ConfigError("--rank", f"above the group's max_lora_rank {group.lora.max_lora_rank}")
    template = fim_template(engine.fim_template)
    model_path = str(engine.local_model_path() or engine.model)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    name = name or f"{tenant.lower().replace('_', '-')}-{stamp}"
    if not config.adapters.roots:
        raise ConfigError("adapters.roots", "no folder to write adapters to")
    output_dir = Path(config.adapters.roots[0]) / tenant / name
    if output_dir.exists():
        raise ConfigError("--name", f"{output_dir} exists already")
    output_dir.mkdir(parents=True)

    train, held = gather_examples(config, tenant, repo, params)
    record = RunRecord(
        tenant=tenant,
        adapter=name,
        base_model=engine.served_model_name,
        model_path=model_path,
        output_dir=str(output_dir),
        started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        examples={
            "train": len(train),
            "train_accepted": sum(e.source == "accepted" for e in train),
            "train_repository": sum(e.source == "repo" for e in train),
            "held_out": len(held),
        },
        params={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
    )
    say(
        f"training adapter {name} of {engine.served_model_name} for tenant {tenant}: "
        f"{len(train)} examples ({record.examples['train_accepted']} accepted, "
        f"{record.examples['train_repository']} from the repository), {len(held)} held out; "
        f"{params.steps} steps on {params.workers} {'GPU' if params.use_gpu else 'CPU'} worker(s)"
    )
    loop_config = {
        **record.params,
        "model_path": model_path,
        "output_dir": str(output_dir),
        "pairs": [(render(e, template), e.middle) for e in train],
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=params.workers,
            use_gpu=params.use_gpu,
            resources_per_worker={
                "CPU": params.cpus_per_worker,
                **({"GPU": 1} if params.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=f"adapter-{name}",
            storage_path=str(output_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    began = time.monotonic()
    trainer.fit()
    record.train_seconds = round(time.monotonic() - began, 1)
    record.losses = json.loads((output_dir / "losses.json").read_text())
    record.steps = len(record.losses)
    adapter_dir = output_dir / "adapter"

    candidates = {name: str(adapter_dir)}
    if current is not None and current.base_model != engine.served_model_name:
        current = None
    if current is not None:
        candidates = {current.name: current.path, **candidates}
    rivals = f"base{', ' + current.name if current else ''}"
    say(f"evaluating {rivals} and {name} on {len(held)} held-out suggestions")
    evaluate_remote = ray.remote(
        num_cpus=params.cpus_per_worker, num_gpus=1 if params.use_gpu else 0
    )(evaluate)
    record.evaluation = ray.get(
        evaluate_remote.remote(
            {
                "model_path": model_path,
                "adapters": candidates,
                "pairs": [(render(e, template), e.middle) for e in held],
                "stops": list(template.stop) if template else [],
                "max_len": params.max_len,
                "gpu": params.use_gpu,
            }
        )
    )
    record.published, record.decision = _decide(record.evaluation["scores"], name, current)
    record.loss_plot = str(_plot_losses(record, output_dir / "loss.png"))
    if record.published and publish:
        _publish(config, record, adapter_dir, group)
    elif record.published:
        record.published = False
        record.decision += " (not published: --no-publish)"
    (output_dir / "run.json").write_text(json.dumps(asdict(record), indent=1))
    say(record.decision)
    return record


def _decide(
    scores: dict[str, dict[str, float]], name: str, current: AdapterRecord | None
) -> tuple[bool, str]:
    """Better means a higher edit similarity and no lower exact match than the
    base model and than the tenant's current adapter."""
    new = scores[name]
    rivals = {"the base model": scores["base"]}
    if current is not None:
        rivals[f"the current adapter {current.name}"] = scores[current.name]

    def shown(s: dict[str, float]) -> str:
        return f"exact match {s['exact_match']:.3f}, edit similarity {s['edit_similarity']:.3f}"

    for label, rival in rivals.items():
        if not (
            new["edit_similarity"] > rival["edit_similarity"]
            and new["exact_match"] >= rival["exact_match"]
        ):
            return False, (
                f"kept aside: {name} ({shown(new)}) is not better than {label} ({shown(rival)})"
            )
    lifts = "; ".join(f"{label}: {shown(rival)}" for label, rival in rivals.items())
    return True, f"published: {name} ({shown(new)}) beats {lifts}"


def _publish(
    config: ServingConfig, record: RunRecord, adapter_dir: Path, group: ReplicaGroupConfig
) -> None:
    scores = record.evaluation["scores"]
    flat = flat_scores(scores, record.adapter)
    try:
        add_adapter(
            Path(config.adapters.registry_file),
            name=record.adapter,
            base_model=record.base_model,
            path=adapter_dir,
            tenant=record.tenant,
            roots=config.adapters.roots,
            max_rank=group.lora.max_lora_rank,
            scores=flat,
            description=f"trained {record.started} on {record.examples['train']} examples",
        )
        set_default(Path(config.adapters.registry_file), record.tenant, record.adapter)
    except AdapterRefused as exc:
        raise ConfigError(
            "adapters", f"the trained adapter could not be registered: {exc}"
        ) from None


def _plot_losses(record: RunRecord, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    steps = list(range(1, len(record.losses) + 1))
    axis.plot(steps, record.losses, color="#9ab", linewidth=1, label="per step")
    window = max(1, len(record.losses) // 20)
    smooth = [
        sum(record.losses[max(0, i - window + 1) : i + 1])
        / len(record.losses[max(0, i - window + 1) : i + 1])
        for i in range(len(record.losses))
    ]
    axis.plot(steps, smooth, color="#146", linewidth=2, label=f"mean of {window}")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (accepted text)")
    axis.set_title(f"{record.adapter}: LoRA on {record.base_model} for {record.tenant}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
