"""Team adapters, end to end on CPU: does a tenant's adapter, trained from
its accepted suggestions, write its house conventions better than the base?

    python -m benchmarks.adapters --out benchmarks/results/adapters

It starts its own `seed-serve up` (the demo model, LoRA on, a home of its
own), then:
1. a house codebase (benchmarks/adapters/house.py: the "acme" platform's
   logging and HTTP helpers, which no public model knows), split by file into
   a repository checkout (training text), files where developers work
   (their accepted suggestions), and unseen files (the next completions);
2. simulated developers of tenant `acme` (training_data: collect) complete
   function bodies through /v1/code/completions, with two sibling files as
   repository `context`, up to `--attempts` samples each; a developer accepts
   a suggestion whose first line is the line they meant (POST /v1/code/events,
   accepted), else dismisses it;
3. `seed-serve adapters train --tenant acme --repo <checkout>` (a Ray Train
   job on the stack's cluster), which evaluates base vs adapter on held-out
   accepted suggestions and publishes the adapter only if it is better;
4. the next completions on unseen files, greedy, through the gateway: tenant
   acme (its adapter, by default) against tenant `other` (the base model):
   exact first lines and edit similarity, and which model answered.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.adapters.house import Task, house_files, tasks_of
from benchmarks.common import Progress
from benchmarks.common.report import md_table, publish, save_figure
from benchmarks.common.stack import BenchStack
from serving.paths import demo_model_dir
from serving.training.evaluate import edit_similarity

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-demo"


def stack_config(port: int) -> dict[str, Any]:
    return {
        "gateway": {"host": "127.0.0.1", "port": port},
        "ray": {"num_cpus": 4, "namespace": "bench-adapters"},
        "replica_groups": [
            {
                "name": "demo",
                "replicas": 2,
                "lora": {"enabled": True, "max_loras": 2, "max_lora_rank": 16},
                "engine": {
                    "model": str(demo_model_dir()),
                    "served_model_name": MODEL,
                    "max_model_len": 2048,
                    "cpu_kv_cache_gib": 1,
                    "extra_args": {"enforce-eager": True},
                },
            }
        ],
    }


def cli(home: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args[:1], "--config", str(config), *args[1:]],
        cwd=ROOT,
        env={**os.environ, "SEED_SERVE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=7200,
    )


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def context_for(
    task: Task, files: dict[str, Any], rng: random.Random, kind: str = "siblings"
) -> list[dict[str, str]]:
    if kind == "none":
        return []
    siblings = [p for p in files if p != task.path and p.split("/")[1] == task.path.split("/")[1]]
    chosen = rng.sample(siblings, k=min(2, len(siblings)))
    return [{"path": p, "text": files[p][0]} for p in chosen]


def complete(
    http: httpx.Client, key: str, task: Task, context: list[dict[str, str]], **sampling: Any
) -> dict[str, Any]:
    response = http.post(
        "/v1/code/completions",
        json={
            "prefix": task.prefix,
            "suffix": task.suffix,
            "path": task.path,
            "language": "python",
            "mode": "line",
            "max_tokens": 40,
            "context": context,
            **sampling,
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    response.raise_for_status()
    return {**response.json(), "replica": response.headers.get("x-seed-serve-replica")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapters")
    parser.add_argument("--attempts", type=int, default=5, help="Samples per task to accept.")
    parser.add_argument("--held-out", type=float, default=0.3, help="Share held out to judge.")
    parser.add_argument("--steps", type=int, default=60, help="Training steps.")
    parser.add_argument("--batch-size", type=int, default=4, help="Training batch size.")
    parser.add_argument("--cpus", type=float, default=2, help="CPUs of the training worker.")
    parser.add_argument("--port", type=int, default=8093)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", type=Path, help="The stack's home (default: a temp folder).")
    parser.add_argument(
        "--context",
        choices=["siblings", "none"],
        default="siblings",
        help="What the IDE sends besides the current file: two sibling files of the same "
        "package as repository context, or nothing.",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    # A stopped benchmark stops the stack it started (its finally blocks run).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home = args.home or Path(tempfile.mkdtemp(prefix="seed-serve-adapters-"))
    home.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    rng = random.Random(args.seed)
    files = house_files(args.seed)
    paths = sorted(files)
    rng.shuffle(paths)
    repo_paths, work_paths, unseen_paths = paths[:10], paths[10:24], paths[24:]
    checkout = home / "house-repo"
    for path in repo_paths:
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(files[path][0])

    print(f"starting the demo stack with LoRA in {home} ...", flush=True)
    stack = BenchStack(home, stack_config(args.port))
    config = stack.config_path
    try:
        print(f"ready after {stack.wait_ready(replicas=2):.0f}s", flush=True)
        from serving.admission.keys import create_key, update_tenant

        keys = home / "keys.yaml"
        _, acme = create_key(keys, tenant="acme", name="dev")
        _, other = create_key(keys, tenant="other", name="dev")
        update_tenant(keys, "acme", training_data="collect")
        time.sleep(3)  # the gateway reloads its keys file
        http = httpx.Client(base_url=base, timeout=300)

        # 2. Developers at work: accepted when right, dismissed otherwise.
        work = tasks_of(files, work_paths)
        progress = Progress(len(work), "tasks")
        accepted = dismissed = 0
        for done, task in enumerate(work, 1):
            context = context_for(task, files, rng, args.context)
            for attempt in range(args.attempts):
                answer = complete(http, acme, task, context, temperature=0.8, seed=attempt)
                right = first_line(answer["text"]).strip() == task.target.strip()
                event: dict[str, Any] = {"completion_id": answer["id"]}
                if right:
                    event |= {
                        "event": "accepted",
                        "accepted_chars": len(first_line(answer["text"])),
                    }
                else:
                    event |= {"event": "dismissed"}
                http.post("/v1/code/events", json=event,
                          headers={"Authorization": f"Bearer {acme}"}).raise_for_status()  # fmt: skip
                if right:
                    accepted += 1
                    break
                dismissed += 1
            progress.update(done, f"{accepted} accepted")
        progress.close()
        print(f"{accepted} suggestions accepted, {dismissed} dismissed", flush=True)

        # 3. The fine-tune as a Ray job, evaluated and published if better.
        trained = cli(home, config, "adapters", "train", "--tenant", "acme", "--name", "acme-v1",
                      "--repo", str(checkout), "--steps", str(args.steps),
                      "--batch-size", str(args.batch_size), "--cpus-per-worker", str(args.cpus),
                      "--held-out", str(args.held_out))  # fmt: skip
        print(trained.stdout[-4000:], trained.stderr[-2000:], flush=True)
        run_dir = home / "adapters" / "acme" / "acme-v1"
        record = json.loads((run_dir / "run.json").read_text())
        time.sleep(4)  # keys file and adapter registry reload

        # 4. The next completions, on files nobody worked on.
        unseen = tasks_of(files, unseen_paths)
        outcome: dict[str, dict[str, Any]] = {}
        for tenant, key in (("acme", acme), ("other", other)):
            exact, similar, models, replicas = 0, 0.0, set(), set()
            for task in unseen:
                context = context_for(task, files, rng, args.context)
                answer = complete(http, key, task, context, temperature=0)
                line = first_line(answer["text"]).strip()
                exact += line == task.target.strip()
                similar += edit_similarity(line, task.target.strip())
                models.add(answer["model"])
                replicas.add(answer["replica"])
            outcome[tenant] = {
                "replicas": sorted(replicas),
                "tasks": len(unseen),
                "exact_match": round(exact / len(unseen), 4),
                "edit_similarity": round(similar / len(unseen), 4),
                "models": sorted(models),
            }
        engine_models = _engine_answers(http, acme, other, unseen[0])
    finally:
        stack.stop()

    scores = record["evaluation"]["scores"]
    result = {
        "house": {"files": len(files), "repository": len(repo_paths), "worked_on": len(work_paths),
                  "unseen": len(unseen_paths)},
        "collection": {"tasks": len(work), "accepted": accepted, "dismissed": dismissed,
                       "attempts_per_task": args.attempts, "context": args.context},
        "training": {k: record[k] for k in ("examples", "steps", "train_seconds", "params")},
        "losses": record["losses"],
        "held_out_scores": scores,
        "published": record["published"],
        "decision": record["decision"],
        "next_completions": outcome,
        "engine_models": engine_models,
    }  # fmt: skip
    folder = publish(
        "benchmarks.adapters", "adapters", sys.argv[1:] if argv is None else argv, {}, args.out,
        result, markdown(result),
    )  # fmt: skip
    plot(result, folder / "adapters-demo.png")
    shutil.copy(run_dir / "loss.png", folder / "adapters-loss.png")
    return 0


def _engine_answers(http: httpx.Client, acme: str, other: str, task: Task) -> dict[str, str]:
    """Which model answered each tenant's plain /v1/completions (vLLM names the adapter)."""
    found = {}
    for tenant, key in (("acme", acme), ("other", other)):
        response = http.post(
            "/v1/completions", json={"model": MODEL, "prompt": task.prefix, "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        found[tenant] = response.json()["model"]
    return found


def markdown(result: dict[str, Any]) -> str:
    scores = result["held_out_scores"]
    rows = [[who, s["exact_match"], s["edit_similarity"]] for who, s in scores.items()]
    nxt = result["next_completions"]
    rows2 = [
        [tenant, result["engine_models"][tenant], ", ".join(o["replicas"]), o["tasks"],
         o["exact_match"], o["edit_similarity"]]
        for tenant, o in nxt.items()
    ]  # fmt: skip
    c, t = result["collection"], result["training"]
    return (
        f"House codebase: {result['house']['files']} files; {c['tasks']} tasks worked on, "
        f"{c['accepted']} suggestions accepted, {c['dismissed']} dismissed (repository context "
        f"sent by the IDE: {c['context']}).\n\n"
        f"Training: {t['examples']} examples, {t['steps']} steps in {t['train_seconds']} s.\n\n"
        "Held-out accepted suggestions (the training job's evaluation):\n\n"
        + md_table(["model", "exact match", "edit similarity"], rows)
        + f"\nDecision: {result['decision']}\n\n"
        "Next completions on unseen files, through the gateway (greedy):\n\n"
        + md_table(
            ["tenant", "served by", "replicas", "tasks", "exact first line", "edit similarity"],
            rows2,
        )
    )


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    scores = result["held_out_scores"]
    names = list(scores)
    for axis, data, title in (
        (left, scores, "held-out accepted suggestions"),
        (right, result["next_completions"], "next completions, unseen files"),
    ):
        keys = list(data)
        x = range(len(keys))
        axis.bar([i - 0.2 for i in x], [data[k]["exact_match"] for k in keys], 0.4,
                 label="exact match", color="#146")  # fmt: skip
        axis.bar([i + 0.2 for i in x], [data[k]["edit_similarity"] for k in keys], 0.4,
                 label="edit similarity", color="#9ab")  # fmt: skip
        axis.set_xticks(list(x), keys if data is not scores else names)
        axis.set_ylim(0, 1)
        axis.set_title(title)
    left.legend(loc="upper left")
    figure.suptitle("A team adapter trained from accepted suggestions (demo model, CPU)")
    return save_figure(figure, path)


if __name__ == "__main__":
    sys.exit(main())
