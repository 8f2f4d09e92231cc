"""Team adapters: the adapter registry (which LoRA adapters exist, whose they
are, where they live, how they scored) and the teams' training data (accepted
suggestions of tenants that opted in).

A leaf beside the gateway's layers: it imports only config, errors and paths,
so the gateway (admission, api), the Ray replicas (which check an adapter's
path again before loading it) and the training job all read the same files.
"""

from serving.adapters.registry import (
    ADAPTER_NAME_PATTERN,
    AdapterCatalog,
    AdapterFolder,
    AdapterRecord,
    AdapterRefused,
    AdapterRegistryFile,
    add_adapter,
    check_adapter_folder,
    load_registry,
    remove_adapter,
    set_default,
    update_adapter,
)
from serving.adapters.team_data import TeamDataStore, TrainingExample

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "AdapterCatalog",
    "AdapterFolder",
    "AdapterRecord",
    "AdapterRefused",
    "AdapterRegistryFile",
    "TeamDataStore",
    "TrainingExample",
    "add_adapter",
    "check_adapter_folder",
    "load_registry",
    "remove_adapter",
    "set_default",
    "update_adapter",
]
