"""teapot-kms-plugin: a Kubernetes KMS v2 plugin backed by OpenStack Barbican."""

__version__ = "0.1.0"
