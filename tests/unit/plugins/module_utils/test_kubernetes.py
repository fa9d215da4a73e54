"""Resource names and object keys of the private Kubernetes client (no API server needed)."""

import pytest

from ansible_collections.teapot.kms.plugins.module_utils._kubernetes import KubeClient, KubeError, Resource, object_key


@pytest.mark.parametrize("name, expected", [
    ("secrets", ("secrets", "", "v1", "secrets", "/api/v1/secrets")),
    ("ConfigMaps", ("configmaps", "", "v1", "configmaps", "/api/v1/configmaps")),
    ("widgets.example.com", ("widgets.example.com", "example.com", None, "widgets", None)),
    ("widgets.v1.example.com", ("widgets.example.com", "example.com", "v1", "widgets", "/apis/example.com/v1/widgets")),
    ("widgets.v2beta1.example.com", ("widgets.example.com", "example.com", "v2beta1", "widgets",
                                     "/apis/example.com/v2beta1/widgets")),
    # A group whose first label merely starts with v is not a version.
    ("gadgets.vendor.io", ("gadgets.vendor.io", "vendor.io", None, "gadgets", None)),
    ("deployments.apps", ("deployments.apps", "apps", None, "deployments", None)),
])
def test_resource_names(name, expected):
    resource = Resource.parse(name)
    list_path = resource.list_path() if resource.version else None
    assert (resource.name, resource.group, resource.version, resource.plural, list_path) == expected


@pytest.mark.parametrize("name", ["", "*.*", "*.apps", "secrets/", "Secrets!", "widgets..example.com", "-x"])
def test_bad_resource_names(name):
    with pytest.raises(ValueError) as error:
        Resource.parse(name)
    assert "resource" in str(error.value)


def test_object_paths_are_quoted():
    secrets = Resource.parse("secrets")
    assert secrets.object_path("kube-system", "a.b") == "/api/v1/namespaces/kube-system/secrets/a.b"
    widgets = Resource.parse("widgets.v1.example.com")
    assert widgets.object_path(None, "w1") == "/apis/example.com/v1/widgets/w1"
    assert widgets.object_path("ns", "a/b") == "/apis/example.com/v1/namespaces/ns/widgets/a%2Fb"


def test_object_key_sorts_like_the_registry():
    keys = [object_key({"metadata": {"namespace": ns, "name": name}}) for ns, name in
            [("a", "x"), ("a-b", "y"), ("a", "y")]]
    # etcd orders /registry/secrets/a-b/... before /registry/secrets/a/... ('-' < '/').
    assert sorted(keys) == ["a-b/y", "a/x", "a/y"]
    assert object_key({"metadata": {"name": "cluster-wide"}}) == "cluster-wide"


def test_missing_kubeconfig_says_what_to_set(tmp_path):
    with pytest.raises(KubeError) as error:
        KubeClient(str(tmp_path / "admin.conf"))
    assert str(tmp_path / "admin.conf") in str(error.value) and "set kubeconfig" in str(error.value)
