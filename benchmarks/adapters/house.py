"""A house codebase: service modules written in conventions no public model
knows (the "acme" platform's logging and HTTP helpers), and completion tasks
in it: the cursor at the start of a function body, the target its first line.

    from acme.platform import hlog, hhttp

    def fetch_invoice(invoice_id: str) -> dict:
        hlog.event("billing.invoice.fetch", invoice_id=invoice_id)
        return hhttp.get_json(f"/v2/billing/invoices/{invoice_id}", retry=hhttp.RETRY_IDEMPOTENT)

Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DOMAINS = {
    "billing": ["invoice", "payment", "refund", "credit_note", "tax_rate"],
    "identity": ["user", "group", "role", "session", "api_token"],
    "catalog": ["product", "category", "price", "bundle", "variant"],
    "shipping": ["parcel", "carrier", "route", "label", "pickup"],
    "support": ["ticket", "agent", "macro", "survey", "escalation"],
    "inventory": ["warehouse", "stock_item", "reservation", "supplier", "batch"],
}
VERBS = {
    "fetch": ("get_json", "RETRY_IDEMPOTENT", "dict"),
    "list": ("get_json", "RETRY_IDEMPOTENT", "list"),
    "create": ("post_json", "RETRY_NEVER", "dict"),
    "update": ("put_json", "RETRY_NEVER", "dict"),
    "delete": ("delete", "RETRY_NEVER", "None"),
}


@dataclass(frozen=True)
class Task:
    path: str
    prefix: str  # the file up to the cursor (start of the body's first line)
    suffix: str  # the rest of the file
    target: str  # the body's first line (the house logging call)


def _function(domain: str, entity: str, verb: str) -> tuple[str, str]:
    call, retry, returns = VERBS[verb]
    plural = entity + "s"
    if verb == "list":
        signature = f"def list_{plural}(limit: int = 50) -> {returns}:"
        log = f'hlog.event("{domain}.{entity}.list", limit=limit)'
        body = f'return hhttp.{call}(f"/v2/{domain}/{plural}?limit={{limit}}", retry=hhttp.{retry})'
    elif verb == "create":
        signature = f"def create_{entity}(fields: dict) -> {returns}:"
        log = f'hlog.event("{domain}.{entity}.create", fields=sorted(fields))'
        body = (
            f'return hhttp.{call}("/v2/{domain}/{plural}", fields, '
            f"retry=hhttp.{retry}, idempotency_key=hhttp.new_key())"
        )
    else:
        signature = f"def {verb}_{entity}({entity}_id: str"
        signature += ", fields: dict" if verb == "update" else ""
        signature += f") -> {returns}:"
        log = f'hlog.event("{domain}.{entity}.{verb}", {entity}_id={entity}_id)'
        data = ", fields" if verb == "update" else ""
        body = (
            f'return hhttp.{call}(f"/v2/{domain}/{plural}/{{{entity}_id}}"{data}, '
            f"retry=hhttp.{retry})"
        )
    return f"{signature}\n    {log}\n    {body}\n", log


def house_files(seed: int = 0) -> dict[str, tuple[str, list[tuple[int, str]]]]:
    """path -> (text, [(offset of a function body's first line, its log line)])."""
    rng = random.Random(seed)
    files: dict[str, tuple[str, list[tuple[int, str]]]] = {}
    for domain, entities in DOMAINS.items():
        for entity in entities:
            verbs = rng.sample(list(VERBS), k=3)
            text = (
                f'"""{domain.title()} service: {entity.replace("_", " ")}s."""\n\n'
                "from acme.platform import hhttp, hlog\n\n\n"
            )
            holes = []
            for verb in verbs:
                function, log = _function(domain, entity, verb)
                holes.append((len(text) + function.index("\n") + 1 + 4, log))
                text += function + "\n\n"
            files[f"services/{domain}/{entity}.py"] = (text.rstrip() + "\n", holes)
    return files


def tasks_of(files: dict[str, tuple[str, list[tuple[int, str]]]], paths: list[str]) -> list[Task]:
    found = []
    for path in paths:
        text, holes = files[path]
        for offset, log in holes:
            found.append(Task(path, text[:offset], text[offset + len(log) :], log))
    return found
