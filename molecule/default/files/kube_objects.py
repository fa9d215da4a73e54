"""Objects the scenario needs in the stand-in's API, through the kubernetes client (CoreV1Api, as the modules use it).

    python3 kube_objects.py KUBECONFIG kubeadm-config FILE     create kube-system/kubeadm-config from FILE unless it exists
    python3 kube_objects.py KUBECONFIG secrets PREFIX COUNT    create default/PREFIX-0.. unless they exist
    python3 kube_objects.py KUBECONFIG read PREFIX COUNT       read them back (fails unless every value is intact)
    python3 kube_objects.py KUBECONFIG cluster-configuration   print kubeadm-config's ClusterConfiguration

Prints JSON: {"created": [...]} or {"read": [...]}.
"""

import base64
import json
import sys

import kubernetes
from kubernetes.client.rest import ApiException


def _value(name):
    return {"token": f"molecule-{name}"}


def main(kubeconfig, action, *args):
    core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=kubeconfig))
    created = []
    if action == "kubeadm-config":
        with open(args[0], encoding="utf-8") as stream:
            body = kubernetes.client.V1ConfigMap(
                metadata=kubernetes.client.V1ObjectMeta(name="kubeadm-config", namespace="kube-system"),
                data={"ClusterConfiguration": stream.read()})
        try:
            core.create_namespaced_config_map("kube-system", body)
            created.append("kube-system/kubeadm-config")
        except ApiException as exc:
            if exc.status != 409:
                raise
    elif action == "secrets":
        prefix, count = args[0], int(args[1])
        for index in range(count):
            name = f"{prefix}-{index}"
            body = kubernetes.client.V1Secret(metadata=kubernetes.client.V1ObjectMeta(name=name), string_data=_value(name))
            try:
                core.create_namespaced_secret("default", body)
                created.append(f"default/{name}")
            except ApiException as exc:
                if exc.status != 409:
                    raise
    elif action == "read":
        prefix, count = args[0], int(args[1])
        read = []
        for index in range(count):
            name = f"{prefix}-{index}"
            secret = core.read_namespaced_secret(name, "default")
            value = base64.b64decode(secret.data["token"]).decode()
            if value != _value(name)["token"]:
                raise SystemExit(f"default/{name} holds something else than what was written")
            read.append(f"default/{name}")
        print(json.dumps({"read": read}))
        return 0
    elif action == "cluster-configuration":
        print(core.read_namespaced_config_map("kubeadm-config", "kube-system").data["ClusterConfiguration"])
        return 0
    print(json.dumps({"created": created}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
