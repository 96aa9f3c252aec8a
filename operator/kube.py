"""The few Kubernetes calls the operator makes. Objects are plain dicts.

Requests go through the official client's configuration and its urllib3 pool (the same TLS, certificates,
proxies and pooled connections), but neither through its generated methods, which validate every body into a
typed model and back (2 ms of CPU per pod, more than the API server spends creating it), nor through
ApiClient.call_api: that re-serializes every body and header value, and runs the kubeconfig's refresh hook on
every request, which re-sets the host, whose setter reads the whole environment for proxies (issue 22: about a
sixth of the operator's CPU at 300 jobs). Here a body is encoded once and the auth headers are read at most once
a second (AUTH_REFRESH_S), so a rotated token is still sent within a second. Every response is read to the end,
so its connection goes back to the pool.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from .api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from . import kueue
from .render.names import JOB_NAME_LABEL
from .write_gate import WriteGate

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read: no request hangs on an API server that went away
AUTH_REFRESH_S = 1.0  # how long the auth headers (a token the kubeconfig's hook may rotate) are reused
LIST_PAGE = 500
_CORE_PLURALS = {"ConfigMap": "configmaps", "Service": "services", "Secret": "secrets", "Pod": "pods", "Event": "events"}
_GROUP_PLURALS = {"Workload": "workloads", "PodGroup": "podgroups"}  # the gang objects, in whichever API group (render/gang.py)


class ForeignChild(Exception):
    """A child's name is taken by an object this job does not own."""


class NamespaceTerminating(Exception):
    """The namespace is being deleted: nothing can be created in it any more."""


class Listing:
    """A collection read page by page (LIST_PAGE objects) as it is iterated, once: at most one page is held, not
    the whole collection (10,000 finished jobs' pods are hundreds of MB as dicts). The list's resource version is
    the first page's; the API server serves every page of one listing as of that version."""

    def __init__(self, fetch_page: Callable[[Optional[str]], dict[str, Any]]):
        self._fetch_page = fetch_page
        self._page: Optional[dict[str, Any]] = fetch_page(None)
        self.resource_version: str = self._page["metadata"].get("resourceVersion", "")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        page, self._page = self._page, None
        if page is None:
            raise RuntimeError("a Listing is iterated once")
        while True:
            cont = page["metadata"].get("continue")
            yield from page.pop("items", None) or []
            if not cont:
                return
            page = self._fetch_page(cont)


def is_namespace_terminating(exc: ApiException) -> bool:
    if exc.status != 403:
        return False
    try:
        details = json.loads(exc.body or "{}").get("details") or {}
    except ValueError:
        return "is being terminated" in str(exc.body)
    return any(cause.get("reason") == "NamespaceTerminating" for cause in details.get("causes") or [])


def path_of(kind: str, namespace: Optional[str], name: Optional[str] = None, api_version: Optional[str] = None) -> str:
    """The REST path of a kind's collection (in a namespace, or across all with None), or of one object.
    api_version: for the kinds that several API groups define (PodGroup)."""
    if kind in _CORE_PLURALS:
        base, plural = "/api/v1", _CORE_PLURALS[kind]
    elif kind == KIND:
        base, plural = f"/apis/{GROUP}/{VERSION}", PLURAL
    elif kind in _GROUP_PLURALS and api_version and "/" in api_version:
        base, plural = f"/apis/{api_version}", _GROUP_PLURALS[kind]
    else:
        raise ValueError(f"no path for kind {kind}")
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


def kueue_path(namespace: Optional[str], name: Optional[str] = None, plural: str = kueue.WORKLOAD_PLURAL) -> str:
    """The REST path of Kueue's Workloads (in a namespace, or across all with None), or of a cluster-scoped Kueue kind."""
    path = f"/apis/{kueue.API_VERSION}" + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None, gate: Optional[WriteGate] = None):
        """gate: writes (any method but GET) pass only while it is open (leader election: write_gate.py)."""
        self.api_client = api_client or client.ApiClient()
        self.gate = gate
        self._auth_lock = threading.Lock()
        self._auth: tuple[float, str, dict[str, str]] = (float("-inf"), "", {})  # (read at, host, headers)

    def request(self, method: str, path: str, body: Any = None, query: Optional[list[tuple[str, str]]] = None,
                content_type: str = "application/json", timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Any:
        """One call; the decoded JSON response. Raises ApiException for a non-2xx status, WriteRefused for a
        write while the gate is shut. A dry run (dryRun=All: start-up discovery) persists nothing and passes: a
        standby discovers what its API server serves before it leads."""
        if self.gate is None or method == "GET" or ("dryRun", "All") in (query or []):
            return self._request(method, path, body, query, content_type, timeout)
        self.gate.enter(f"{method} {path}")
        try:
            return self._request(method, path, body, query, content_type, timeout)
        finally:
            self.gate.leave()

    def request_target(self, path: str, query: Optional[list[tuple[str, str]]] = None) -> tuple[str, dict[str, str]]:
        """The URL of a path (and query) and the headers every request carries: authorization, User-Agent, the
        client's default headers."""
        with self._auth_lock:
            read_at, host, headers = self._auth
            if time.monotonic() - read_at >= AUTH_REFRESH_S:
                configuration = self.api_client.configuration
                headers = dict(self.api_client.default_headers)  # User-Agent among them
                if self.api_client.cookie:
                    headers["Cookie"] = self.api_client.cookie
                for setting in configuration.auth_settings().values():  # runs the refresh hook, which may set the host
                    if setting["in"] == "header" and setting["value"]:
                        headers[setting["key"]] = setting["value"]
                host = configuration.host
                self._auth = (time.monotonic(), host, headers)
        return host + path + (f"?{urlencode(query, safe='/', quote_via=quote)}" if query else ""), headers

    def _request(self, method: str, path: str, body: Any, query: Optional[list[tuple[str, str]]], content_type: str,
                 timeout: tuple[float, float]) -> Any:
        url, auth_headers = self.request_target(path, query)
        headers = {**auth_headers, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":")).encode()
        response = self.api_client.rest_client.pool_manager.request(
            method, url, body=data, headers=headers, timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            preload_content=False)
        try:
            payload = response.data
        finally:
            response.release_conn()
        if not 200 <= response.status <= 299:
            failed = RESTResponse(response)
            failed.data = payload  # type: ignore[assignment]  # (the client declares it None until read)
            raise ApiException.from_response(http_resp=failed, body=payload.decode("utf-8", "replace"), data=None)
        return json.loads(payload) if payload else None

    # ------------------------------------------------------------------------------------------ writes
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the object; the object as the API server stored it."""
        try:
            return self.request("POST", path_of(obj["kind"], obj["metadata"]["namespace"], api_version=obj.get("apiVersion")), obj)
        except ApiException as exc:
            if is_namespace_terminating(exc):
                raise NamespaceTerminating(obj["metadata"]["namespace"]) from exc
            raise

    def create_if_absent(self, obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Create the object; (True, created) or (False, ours that already exists).

        An existing object owned by someone else (typically a deleted job of the same name whose
        children the garbage collector has not removed yet) raises ForeignChild: never adopt it.
        """
        kind, meta = obj["kind"], obj["metadata"]
        try:
            return True, self.create(obj)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: created by an earlier (maybe interrupted) reconcile
                raise
        existing = self.request("GET", path_of(kind, meta["namespace"], meta["name"], api_version=obj.get("apiVersion")))
        owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences", [])}
        if meta["ownerReferences"][0]["uid"] not in owners:
            raise ForeignChild(f"{kind} {meta['name']} exists but belongs to another owner (a deleted job of the same name?); waiting for it to go")
        return False, existing

    def post_event(self, job: dict[str, Any], event) -> None:
        """A core/v1 Event on the job (works from any thread, unlike kopf.event)."""
        meta = job["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
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
            self.create(body)
        except ApiException as exc:  # an event is worth less than the reconcile that emits it
            log.warning("could not post event %s on %s: %s", event.reason, meta["name"], exc.reason)

    def delete_pod(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """Graceful: the kubelet sends SIGTERM (the trainer saves a checkpoint), SIGKILL after the pod's grace period.
        The pod as it is now (terminating), or None if it is gone."""
        try:
            return self.request("DELETE", path_of("Pod", namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the job (its children follow by garbage collection); the UID precondition spares a namesake."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            self.request("DELETE", path_of(KIND, namespace, name), body)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a namesake
                raise

    def get_job(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """The job as the API server holds it; None if there is none."""
        try:
            return self.request("GET", path_of(KIND, namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of status (null removes a key); the job as it is now."""
        return self.request("PATCH", path_of(KIND, namespace, name) + "/status", {"status": status},
                            content_type="application/merge-patch+json")

    # ------------------------------------------------------------------------------------------- Kueue
    def patch_workload_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a Workload's status subresource (its metadata.resourceVersion, if given, is a
        precondition: 409 Conflict if Kueue wrote meanwhile); the Workload as it is now."""
        return self.request("PATCH", kueue_path(namespace, name) + "/status", patch, content_type="application/merge-patch+json")

    def get_workload(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """A Workload by name; None if there is none."""
        try:
            return self.request("GET", kueue_path(namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None

    def patch_workload(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a Workload (metadata.resourceVersion, if given, is a precondition); the Workload as it is now."""
        return self.request("PATCH", kueue_path(namespace, name), patch, content_type="application/merge-patch+json")

    def delete_workload(self, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", kueue_path(namespace, name))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def resource_flavor(self, name: str) -> dict[str, Any]:
        """A ResourceFlavor (cluster-scoped): its nodeLabels and tolerations place an admitted gang."""
        return self.request("GET", kueue_path(None, name, "resourceflavors"))

    def workload_priority(self, name: str) -> int:
        """The value of a WorkloadPriorityClass (cluster-scoped)."""
        return int(self.request("GET", kueue_path(None, name, "workloadpriorityclasses"))["value"])

    # ------------------------------------------------------------------------------------------- reads
    def served_group_versions(self, wanted: tuple[str, ...], resource: str) -> frozenset[str]:
        """Which of the `wanted` API group versions ("group/version") the API server serves `resource` in (discovery)."""
        groups = self.request("GET", "/apis") or {}
        listed = {v["groupVersion"] for g in groups.get("groups") or [] for v in g.get("versions") or []}
        served = set()
        for group_version in wanted:
            if group_version in listed:
                resources = self.request("GET", f"/apis/{group_version}") or {}
                if any(r.get("name") == resource for r in resources.get("resources") or []):
                    served.add(group_version)
        return frozenset(served)

    def node_labels(self, name: str) -> dict[str, str]:
        """A node's labels (its topology domains: status.placement)."""
        return dict((self.request("GET", f"/api/v1/nodes/{name}")["metadata"].get("labels") or {}))

    def dry_run_create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as the API server would store it (admission, defaulting, disabled fields dropped); nothing is persisted."""
        meta = obj["metadata"]
        return self.request("POST", path_of(obj["kind"], meta["namespace"], api_version=obj.get("apiVersion")), obj, query=[("dryRun", "All")])

    def list(self, kind: str, namespace: Optional[str] = None) -> Listing:
        """Every job, or every pod or Kueue Workload labelled for a job, in a namespace (None: all), as a Listing:
        its first page read now (and with it the list's resource version), the rest as it is iterated."""
        query = [("limit", str(LIST_PAGE))]
        if kind in ("Pod", "Workload"):
            query.append(("labelSelector", JOB_NAME_LABEL))
        collection = kueue_path(namespace) if kind == "Workload" else path_of(kind, namespace)
        return Listing(lambda cont: self.request("GET", collection, query=query + ([("continue", cont)] if cont else [])))
