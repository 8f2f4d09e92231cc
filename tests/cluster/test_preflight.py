"""What the model's files say about a replica group before its engine starts:
`seed-serve up` refuses in a second (tests/e2e/test_cli.py), and the replica
actor repeats the check on the engine's node and fails for good, without
starting an engine that could never serve."""

from __future__ import annotations

from pathlib import Path

from serving.cluster.preflight import fim_problem, group_problem, model_tokenizer_json
from serving.cluster.replica import ReplicaActor
from serving.config import ReplicaGroupConfig
from serving.engine_link.replica_info import ReplicaState


def _group(model_dir: Path, fim_template: str) -> ReplicaGroupConfig:
    return ReplicaGroupConfig.model_validate(
        {
            "name": "g",
            "engine": {
                "model": str(model_dir),
                "served_model_name": "tiny-llama",
                "device": "cpu",
                "fim_template": fim_template,
            },
        }
    )


def test_a_fim_template_is_checked_against_the_models_own_tokenizer(tiny_model_dir: Path) -> None:
    # The tiny model carries Seed-Coder's FIM tokens, each one token.
    assert group_problem(_group(tiny_model_dir, "seed-coder")) == ""
    assert group_problem(_group(tiny_model_dir, "none")) == ""
    problem = group_problem(_group(tiny_model_dir, "starcoder"))
    assert problem.startswith("engine.fim_template 'starcoder' does not fit this model's tokenizer")
    assert "'<fim_prefix>' is" in problem and "Choose the template" in problem


def test_without_the_tokenizer_at_hand_the_engine_decides(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # a model folder with no tokenizer.json
    group = _group(tmp_path, "starcoder")
    assert model_tokenizer_json(group.engine) is None
    assert group_problem(group) == ""


def test_fim_problem_names_every_token_that_is_not_one_token() -> None:
    assert fim_problem("t", {"<a>": 1, "<b>": 1}) == ""
    problem = fim_problem("t", {"<a>": 3, "<b>": 1, "<c>": 2})
    assert "'<a>' is 3 tokens; '<c>' is 2 tokens" in problem and "'<b>'" not in problem


def test_the_replica_actor_fails_for_good_without_starting_an_engine(
    tiny_model_dir: Path,
) -> None:
    group = _group(tiny_model_dir, "starcoder")
    actor = ReplicaActor("g-0", group.model_dump(mode="json"), local_ray=True)
    assert actor.fatal and actor.state is ReplicaState.FAILED
    assert actor.process is None and actor.kv_events is None
    assert "does not fit this model's tokenizer" in actor.message
