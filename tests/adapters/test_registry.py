"""The adapter registry: what may be registered (and later loaded), and who
may use what."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.adapters import (
    AdapterCatalog,
    AdapterRefused,
    add_adapter,
    check_adapter_folder,
    load_registry,
    remove_adapter,
    update_adapter,
)
from serving.errors import ConfigError
from tests.support.adapters import fake_adapter_folder


def test_a_folder_outside_the_roots_is_refused_also_through_a_link(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    inside = fake_adapter_folder(root / "team-a")
    outside = fake_adapter_folder(tmp_path / "elsewhere" / "team-b")
    assert check_adapter_folder(inside, [str(root)]).rank == 8
    with pytest.raises(AdapterRefused, match="outside the configured adapter roots"):
        check_adapter_folder(outside, [str(root)])
    os.symlink(outside, root / "sneaky")
    with pytest.raises(AdapterRefused, match="outside the configured adapter roots"):
        check_adapter_folder(root / "sneaky", [str(root)])
    with pytest.raises(AdapterRefused, match="outside"):
        check_adapter_folder(root / ".." / "elsewhere" / "team-b", [str(root)])
    with pytest.raises(AdapterRefused, match="must be absolute"):
        check_adapter_folder("adapters/team-a", [str(root)])


def test_what_is_not_a_usable_lora_adapter_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    (root / "empty").mkdir(parents=True)
    with pytest.raises(AdapterRefused, match=r"no adapter_config\.json"):
        check_adapter_folder(root / "empty", [str(root)])
    no_weights = fake_adapter_folder(root / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterRefused, match="no weights"):
        check_adapter_folder(no_weights, [str(root)])
    bad_config = fake_adapter_folder(root / "bad-config")
    (bad_config / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterRefused, match="cannot be read"):
        check_adapter_folder(bad_config, [str(root)])
    prefix = fake_adapter_folder(root / "prefix")
    (prefix / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}')
    with pytest.raises(AdapterRefused, match="not describe a LoRA"):
        check_adapter_folder(prefix, [str(root)])
    big = fake_adapter_folder(root / "big", rank=64)
    with pytest.raises(AdapterRefused, match="rank 64 is above the engines' max_lora_rank 16"):
        check_adapter_folder(big, [str(root)], max_rank=16)


def test_register_update_remove(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    registry = root / "registry.yaml"
    folder = fake_adapter_folder(root / "payments-v1")
    record = add_adapter(
        registry, name="payments-v1", base_model="m", path=folder, tenant="payments",
        roots=[str(root)], scores={"exact_match": 0.4},
    )  # fmt: skip
    assert record.rank == 8 and record.path == str(folder.resolve())
    with pytest.raises(AdapterRefused, match="already registered"):
        add_adapter(
            registry, name="payments-v1", base_model="m", path=folder, tenant="x",
            roots=[str(root)],
        )  # fmt: skip
    with pytest.raises(AdapterRefused, match="name"):
        add_adapter(
            registry, name="Bad Name", base_model="m", path=folder, tenant="x", roots=[str(root)]
        )
    update_adapter(registry, "payments-v1", scores={"exact_match": 0.5})
    assert load_registry(registry).adapters[0].scores == {"exact_match": 0.5}
    assert remove_adapter(registry, "payments-v1").name == "payments-v1"
    assert load_registry(registry).adapters == []
    assert folder.is_dir()  # unregistering keeps the files
    with pytest.raises(KeyError):
        remove_adapter(registry, "payments-v1")


def test_the_catalog_answers_only_the_owning_tenant_and_keeps_the_last_good_file(
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    registry = root / "registry.yaml"
    add_adapter(
        registry, name="a1", base_model="m", path=fake_adapter_folder(root / "a1"),
        tenant="payments", roots=[str(root)],
    )  # fmt: skip
    catalog = AdapterCatalog(registry)
    assert catalog.reload() is True and catalog.reload() is False
    assert catalog.usable("a1", tenant="payments", base_model="m") is not None
    assert catalog.usable("a1", tenant="search", base_model="m") is None
    assert catalog.usable("a1", tenant="payments", base_model="other") is None
    registry.write_text("adapters: [{name: broken}]\n")
    with pytest.raises(ConfigError):
        catalog.reload()
    assert catalog.get("a1") is not None  # the last good view stays
