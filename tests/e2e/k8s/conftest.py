"""The Kubernetes path's cluster for this folder (tests/support/k8s_cluster.py):
a real `ray start --head` and a gateway joining it through Ray Client, shared
by its modules. tests/conftest.py starts it early; it is stopped here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.k8s_cluster import K8sCluster, RayHead
from tests.support.stack import SeedServeProcess


@pytest.fixture(scope="package")
def k8s_cluster(early_k8s_cluster: K8sCluster | None) -> Iterator[K8sCluster]:
    assert early_k8s_cluster is not None, "tests/conftest.py starts it when k8s/ runs"
    try:
        yield early_k8s_cluster
    finally:
        early_k8s_cluster.stop()


@pytest.fixture(scope="package")
def ray_head(k8s_cluster: K8sCluster) -> RayHead:
    return k8s_cluster.head


@pytest.fixture(scope="package")
def k8s_gateway(request: pytest.FixtureRequest, k8s_cluster: K8sCluster) -> SeedServeProcess:
    """`seed-serve gateway` outside the cluster, joined through Ray Client: it
    creates the controller there, which starts one replica (LoRA on)."""
    gateway = k8s_cluster.gateway()
    # demo/'s stack, if tiny/ did not start it (tests/conftest.py: early_demo_stack).
    request.getfixturevalue("early_demo_stack")
    return gateway
