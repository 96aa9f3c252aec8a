"""The few Kubernetes calls the operator makes, over the official client. Objects are plain dicts."""

from __future__ import annotations

import json
import logging
import socket
from datetime import datetime, timezone
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .render.names import JOB_NAME_LABEL

log = logging.getLogger(__name__)


class ForeignChild(Exception):
    """A child's name is taken by an object this job does not own."""


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create the object; True if created, False if ours already exists.

        An existing object owned by someone else (typically a deleted job of the same name whose
        children the garbage collector has not removed yet) raises ForeignChild: never adopt it.
        """
        kind, meta = obj["kind"], obj["metadata"]
        create, read = self._verbs[kind]
        try:
            create(meta["namespace"], obj)
            return True
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: created by an earlier (maybe interrupted) reconcile
                raise
        existing = json.loads(read(meta["name"], meta["namespace"], _preload_content=False).data)
        owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences", [])}
        if meta["ownerReferences"][0]["uid"] not in owners:
            raise ForeignChild(f"{kind} {meta['name']} exists but belongs to another owner (a deleted job of the same name?); waiting for it to go")
        return False

    @property
    def _verbs(self) -> dict[str, tuple]:
        core = self.core
        return {
            "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map),
            "Service": (core.create_namespaced_service, core.read_namespaced_service),
            "Secret": (core.create_namespaced_secret, core.read_namespaced_secret),
            "Pod": (core.create_namespaced_pod, core.read_namespaced_pod),
        }

    def post_event(self, job: dict[str, Any], event) -> None:
        """A core/v1 Event on the job (works from any thread, unlike kopf.event)."""
        meta = job["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": "llm-training-operator"},
            "reportingComponent": "llmtraining.dev/operator",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            _drain(self.core.create_namespaced_event(meta["namespace"], cast(Any, body), _preload_content=False))
        except ApiException as exc:  # an event is worth less than the reconcile that emits it
            log.warning("could not post event %s on %s: %s", event.reason, meta["name"], exc.reason)

    def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        response: Any = self.core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}", _preload_content=False)
        return json.loads(response.data)["items"]

    def delete_pod(self, namespace: str, name: str) -> None:
        """Graceful: the kubelet sends SIGTERM (the trainer saves a checkpoint), SIGKILL after the pod's grace period."""
        try:
            _drain(self.core.delete_namespaced_pod(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the job (its children follow by garbage collection); the UID precondition spares a namesake."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            _drain(self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body=cast(Any, body), _preload_content=False))
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a namesake
                raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A JSON merge patch of status: null removes a key."""
        _drain(self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _preload_content=False))


def _drain(response: Any) -> None:
    """Read a raw response to the end so its connection goes back to the pool (else every call opens a new one)."""
    response.drain_conn()
    response.release_conn()
