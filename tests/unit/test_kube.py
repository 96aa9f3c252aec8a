"""kube.py against a scripted local HTTP server: pooled connections, create-if-absent, a terminating namespace,
paginated listings."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from llm_operator.kube import AUTH_REFRESH_S, ForeignChild, Kube, NamespaceTerminating
from llm_operator.lifecycle import Event

TERMINATING = {"kind": "Status", "code": 403, "reason": "Forbidden",
               "message": 'pods "x" is forbidden: unable to create new content in namespace ns because it is being terminated',
               "details": {"causes": [{"reason": "NamespaceTerminating", "message": "namespace ns is being terminated"}]}}


class FakeApiServer(ThreadingHTTPServer):
    def __init__(self, respond):
        self.respond, self.requests, self.connections, self.headers = respond, [], 0, []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API server
    wbufsize = 1 << 16  # one write per response (no Nagle delays)

    def setup(self):
        super().setup()
        self.server.connections += 1

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.requests.append((self.command, self.path, body))
        self.server.headers.append(self.headers)  # case-insensitive, as HTTP headers are
        code, payload = self.server.respond(self.command, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        server = FakeApiServer(respond)
        servers.append(server)
        configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        return server, Kube(client.ApiClient(configuration))

    yield start
    for server in servers:
        server.shutdown()


JOB = {"metadata": {"name": "demo", "namespace": "ns", "uid": "u1"}}


def child(kind="Pod", owner="u1"):
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": "demo-worker-0", "namespace": "ns", "ownerReferences": [{"uid": owner}]}}


def test_every_response_is_read_so_one_connection_serves_them_all(serve):
    server, kube = serve(lambda method, path, body: (201 if method == "POST" else 200, {"kind": "Event", "metadata": {"name": "e"}}))
    for i in range(20):
        kube.post_event(JOB, Event("Normal", "Created", f"event {i}"))
        kube.delete_pod("ns", "demo-worker-0")
    assert len(server.requests) == 40 and server.connections == 1


def test_create_if_absent_takes_ours_and_refuses_a_namesakes(serve):
    def respond(method, path, body):
        if method == "POST":
            return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
        return 200, {**child(), "status": {"phase": "Running"}}

    server, kube = serve(respond)
    assert kube.create_if_absent(child()) == (False, {**child(), "status": {"phase": "Running"}})
    assert [(m, p) for m, p, _ in server.requests] == [("POST", "/api/v1/namespaces/ns/pods"), ("GET", "/api/v1/namespaces/ns/pods/demo-worker-0")]
    with pytest.raises(ForeignChild):
        kube.create_if_absent(child(owner="u2"))


def test_a_terminating_namespace_is_told_apart_from_other_refusals(serve):
    refused = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "RBAC: not allowed"}
    answers = iter([TERMINATING, refused, TERMINATING])
    server, kube = serve(lambda method, path, body: (403, next(answers)))
    with pytest.raises(NamespaceTerminating):
        kube.create_if_absent(child())
    with pytest.raises(client.exceptions.ApiException) as refusal:
        kube.create_if_absent(child())
    assert refusal.value.status == 403 and not isinstance(refusal.value, NamespaceTerminating)
    with pytest.raises(NamespaceTerminating):  # no Event into a namespace being deleted
        kube.post_event(JOB, Event("Warning", "Restarting", "…"))


def test_listings_follow_continue_tokens(serve):
    def respond(method, path, body):
        page = 2 if "continue=next" in path else 1
        return 200, {"metadata": {"resourceVersion": "42", **({"continue": "next"} if page == 1 else {})},
                     "items": [{"metadata": {"name": f"p{page}"}}]}

    server, kube = serve(respond)
    listing = kube.list("Pod")
    assert listing.resource_version == "42"
    assert [i["metadata"]["name"] for i in listing] == ["p1", "p2"]
    assert server.requests[0][1] == "/api/v1/pods?limit=500&labelSelector=llmtraining.dev/job-name"


def test_a_listing_reads_its_next_page_only_once_the_last_is_consumed(serve):
    """At most one page held: 10,000 finished jobs' pods listed whole are hundreds of MB (issue 22)."""
    pages = 3

    def respond(method, path, body):
        page = int(path.rsplit("continue=", 1)[1]) if "continue=" in path else 1
        more = {"continue": str(page + 1)} if page < pages else {}
        return 200, {"metadata": {"resourceVersion": "7", **more}, "items": [{"metadata": {"name": f"p{page}-{i}"}} for i in range(2)]}

    server, kube = serve(respond)
    items = iter(kube.list("Pod"))
    assert len(server.requests) == 1  # the first page: the list's resource version
    assert [next(items)["metadata"]["name"] for _ in range(2)] == ["p1-0", "p1-1"]
    assert len(server.requests) == 1
    assert next(items)["metadata"]["name"] == "p2-0" and len(server.requests) == 2
    assert [i["metadata"]["name"] for i in items] == ["p2-1", "p3-0", "p3-1"] and len(server.requests) == 3


@pytest.mark.parametrize("api_version, path", [
    ("scheduling.k8s.io/v1beta1", "/apis/scheduling.k8s.io/v1beta1/namespaces/ns/podgroups"),
    ("scheduling.volcano.sh/v1beta1", "/apis/scheduling.volcano.sh/v1beta1/namespaces/ns/podgroups"),
    ("scheduling.x-k8s.io/v1alpha1", "/apis/scheduling.x-k8s.io/v1alpha1/namespaces/ns/podgroups"),
])
def test_pod_groups_go_to_their_own_api_group(serve, api_version, path):
    server, kube = serve(lambda method, path, body: (409, {}) if method == "POST" else
                         (200, {"metadata": {"name": "demo", "ownerReferences": [{"uid": "u1"}]}}))
    pod_group = {"apiVersion": api_version, "kind": "PodGroup", "metadata": {"name": "demo", "namespace": "ns", "ownerReferences": [{"uid": "u1"}]}}
    assert kube.create_if_absent(pod_group)[0] is False
    assert [(m, p) for m, p, _ in server.requests] == [("POST", path), ("GET", f"{path}/demo")]


def test_served_group_versions_asks_discovery_for_the_resource(serve):
    groups = {"groups": [
        {"name": "scheduling.k8s.io", "versions": [{"groupVersion": "scheduling.k8s.io/v1"}, {"groupVersion": "scheduling.k8s.io/v1beta1"}]},
        {"name": "scheduling.volcano.sh", "versions": [{"groupVersion": "scheduling.volcano.sh/v1beta1"}]},
    ]}
    resources = {"/apis/scheduling.k8s.io/v1beta1": {"resources": [{"name": "workloads"}, {"name": "podgroups"}, {"name": "podgroups/status"}]},
                 "/apis/scheduling.volcano.sh/v1beta1": {"resources": [{"name": "queues"}]}}  # a version without PodGroups
    server, kube = serve(lambda method, path, body: (200, groups if path == "/apis" else resources[path]))
    wanted = ("scheduling.k8s.io/v1beta1", "scheduling.volcano.sh/v1beta1", "scheduling.x-k8s.io/v1alpha1")
    assert kube.served_group_versions(wanted, "podgroups") == frozenset({"scheduling.k8s.io/v1beta1"})
    assert [p for _, p, _ in server.requests] == ["/apis", "/apis/scheduling.k8s.io/v1beta1", "/apis/scheduling.volcano.sh/v1beta1"]


def test_dry_run_create_posts_with_dry_run_all_and_returns_what_would_be_stored(serve):
    stored = {"kind": "PodGroup", "metadata": {"name": "p-x"}, "spec": {"schedulingPolicy": {"gang": {"minCount": 1}}}}
    server, kube = serve(lambda method, path, body: (201, stored))
    probe = {"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup", "metadata": {"generateName": "p-", "namespace": "ns"}, "spec": {}}
    assert kube.dry_run_create(probe) == stored
    assert [(m, p) for m, p, _ in server.requests] == [("POST", "/apis/scheduling.k8s.io/v1beta1/namespaces/ns/podgroups?dryRun=All")]


def test_a_rotated_token_is_sent_within_a_second_without_running_the_refresh_hook_per_request(serve):
    """The kubeconfig's refresh hook (an exec plugin's or a projected service-account token) re-sets the host, which
    reads the whole environment: once a second, not once a request (issue 22)."""
    server, kube = serve(lambda method, path, body: (200, {}))
    configuration = kube.api_client.configuration
    configuration.api_key = {"authorization": "old"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    hook_runs = []
    configuration.refresh_api_key_hook = lambda c: hook_runs.append(c)
    for _ in range(10):
        kube.get_job("ns", "demo")
    configuration.api_key = {"authorization": "new"}  # the token file was rotated
    kube.get_job("ns", "demo")
    assert len(hook_runs) == 1 and server.headers[-1]["Authorization"] == "Bearer old"
    time.sleep(AUTH_REFRESH_S)
    kube.get_job("ns", "demo")
    assert len(hook_runs) == 2 and server.headers[-1]["Authorization"] == "Bearer new"


def test_requests_carry_the_user_agent_and_a_merge_patch_its_content_type(serve):
    server, kube = serve(lambda method, path, body: (200, {"status": {"phase": "Running"}}))
    kube.api_client.user_agent = "llm-training-operator/test replica-a"
    assert kube.patch_job_status("ns", "demo", {"phase": "Running", "message": None}) == {"status": {"phase": "Running"}}
    method, path, body = server.requests[0]
    assert (method, path, body) == ("PATCH", "/apis/llmtraining.dev/v1alpha1/namespaces/ns/llmtrainingjobs/demo/status",
                                    {"status": {"phase": "Running", "message": None}})
    assert server.headers[0]["Content-Type"] == "application/merge-patch+json"
    assert server.headers[0]["User-Agent"] == "llm-training-operator/test replica-a"
