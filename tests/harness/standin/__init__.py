"""The kube-apiserver stand-in's parts (entry point: tests/harness/kube_apiserver_standin.py)."""
