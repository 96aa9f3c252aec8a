"""The few Kubernetes calls the operator makes, over the official client. Objects are plain dicts."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .api import GROUP, PLURAL, VERSION
from .render.names import JOB_NAME_LABEL


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create the object; an existing one with the same name is left alone. True if created."""
        create = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Secret": self.core.create_namespaced_secret,
            "Pod": self.core.create_namespaced_pod,
        }[obj["kind"]]
        try:
            create(obj["metadata"]["namespace"], obj)
            return True
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists: created by an earlier (maybe interrupted) reconcile
                return False
            raise

    def secret_exists(self, namespace: str, name: str) -> bool:
        try:
            self.core.read_namespaced_secret(name, namespace, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}", _preload_content=False)
        return json.loads(response.data)["items"]

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
