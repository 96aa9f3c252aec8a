"""`llm-operator run`: configure Kopf and the Kubernetes client, then run the handlers."""

from __future__ import annotations

import asyncio
import os
import logging
import time
import warnings
from typing import Callable, TypeVar

import aiohttp
import kopf
import prometheus_client
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from . import handlers, kueue
from .job_loop import JobLoops
from .kopf_memory import EventOnlyMemories
from .kube import LIST_PAGE, Kube
from .leader_election import DRAIN_SECONDS, Elector
from .lifecycle import LifecycleSettings
from .pod_watch import watch_pods
from .probes import ProbeServer, ProbeState
from .reconcile import WRITE_CONCURRENCY, Reconciler
from .render import RenderContext
from .render.gang import GANG_APIS, KUBERNETES_API, default_gang_scheduler, keeps_topology, topology_probe_pod_group
from .render.names import JOB_NAME_LABEL
from .replica import Leadership, lease_namespace, replica_identity, user_agent
from .view import ClusterView
from .write_gate import WriteGate

LAUNCHER_IMAGE_ENV = "LLMTO_LAUNCHER_IMAGE"  # the trainer image program pods copy the launcher from

PREFIX = "llmtraining.dev"
log = logging.getLogger("llm_operator")


def load_kube_config() -> None:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()


class EventHandlersOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf builds every event's diff base (a deep copy of the whole object) to detect changes for on.create /
    on.update / on.field handlers, even when there are none: a fifth of the operator's CPU under a burst of
    pod events. This operator has only on.event handlers (tests/unit/test_handlers.py holds it to that), so
    the diff base is never read: build an empty one."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


T = TypeVar("T")


def retry_at_startup(what: str, call: Callable[[], T], attempts: int) -> T:
    """call(), retried with exponential back-off while the API server is not reachable yet, then fatal: a start-up
    guess would hold for the operator's whole life."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1:
                raise
            log.warning("%s failed (retrying): %s", what, exc)
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def discover_gang_apis(kube: Kube, attempts: int = 6) -> frozenset[str]:
    """The PodGroup APIs the API server serves, asked once at start-up (a cluster that turns one on later needs an
    operator restart). Retried, then fatal: a guess would fail or ungroup jobs for the operator's whole life."""
    return retry_at_startup("API discovery of the PodGroup APIs", lambda: kube.served_group_versions(GANG_APIS, "podgroups"),
                            attempts)


def discover_pod_group_topology(kube: Kube, gang_apis: frozenset[str], namespace: str, attempts: int = 6) -> bool:
    """Whether the API server keeps PodGroup spec.schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling),
    from a dry-run create of a probe PodGroup in `namespace` (render/gang.py says why not the OpenAPI schema). A refusal
    (no right to create PodGroups there, no such namespace, a probe it finds invalid) means no: jobs that require a
    topology then fail saying so, rather than run unplaced."""
    if KUBERNETES_API not in gang_apis:
        return False

    def probe() -> bool:
        try:
            return keeps_topology(kube.dry_run_create(topology_probe_pod_group(namespace)))
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                log.warning("PodGroup topology discovery: a dry-run PodGroup in namespace %s was refused (%s %s): taken as not served",
                            namespace, exc.status, exc.reason)
                return False
            raise

    return retry_at_startup("PodGroup topology discovery", probe, attempts)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    # Our prefix, not Kopf's: handler progress and the last-handled spec live in annotations
    # (the status subresource belongs to the API, and its schema would prune Kopf's fields).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = EventHandlersOnlyDiffBase(prefix=PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # only our pods, filtered by the API server: the others would cost memory and CPU for nothing
    settings.watching.label_selectors["v1", "pods"] = JOB_NAME_LABEL
    settings.watching.label_selectors[kueue.GROUP, kueue.WORKLOAD_PLURAL] = JOB_NAME_LABEL  # only our Workloads
    settings.networking.request_timeout = 60
    # Kopf lists a collection whole by default (no limit): at start-up with 10,000 finished jobs, every pod at once
    # as one response and its dicts. Paged as the view's own listings are, at most a page is held.
    settings.watching.chunk_size = LIST_PAGE
    # Kopf keeps a worker per object for a while after its last event, and the worker holds that event's whole
    # body: after a burst of pod events, thousands of them. Let them go soon (a new one costs a task).
    settings.queueing.idle_timeout = 0.5
    settings.execution.max_workers = 8


def kopf_login(agent: str):
    """A Kopf login handler: Kopf's own (from the kubernetes client's configuration), with this replica's User-Agent
    on Kopf's requests too (its watches, its Events): Kopf offers no setting for the header, but takes a session."""

    async def login(logger, settings: kopf.OperatorSettings, **_) -> kopf.AiohttpSession:
        info = kopf.login_via_client(logger=logger, settings=settings)
        if info is None:
            raise kopf.LoginError("no credentials: neither in-cluster nor a kubeconfig")
        with warnings.catch_warnings():  # as Kopf builds its session (auth.py): its basic-auth deprecation is its own
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="kopf")
            auth = info.as_aiohttp_basic_auth()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
                                        headers={**info.as_http_headers(), "User-Agent": agent}, auth=auth,
                                        proxy=info.proxy_url, trust_env=info.trust_env)
        return kopf.AiohttpSession(aiohttp_session=session, server=info.server, default_namespace=info.default_namespace,
                                   priority=info.priority, expiration=info.expiration)

    return login


def exit_on_lost_lease(leadership: Leadership):
    def lost() -> None:
        """controller-runtime's "leader election lost": stop writing and exit at once (the pod restarts as a
        standby); any cleanup would write as a replica that no longer leads."""
        leadership.step_down()
        log.critical("leader election lost: exiting")
        logging.shutdown()
        os._exit(1)

    return lost


def run_operator(*, namespaces: list[str], all_namespaces: bool, health_port: int, metrics_port: int, cluster_domain: str,
                 progress_interval: float = 15.0, log_format: str = "json", verbose: bool = False,
                 lifecycle: LifecycleSettings | None = None, gang_scheduler: str = "auto", volcano_scheduler_name: str = "volcano",
                 coscheduling_scheduler_name: str = "scheduler-plugins-scheduler", leader_election: bool = True) -> int:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL)
    if not verbose:  # "Handler 'pod_event' succeeded." for every watch event: a log line per event, for nothing
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    load_kube_config()
    from .ssh_keys import generate_job_keys

    identity = replica_identity()
    agent = user_agent(identity)  # on every request, so that the API server's audit log shows which replica wrote
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 2 * WRITE_CONCURRENCY  # the writers, the reconcile threads, the sweeps
    api_client = client.ApiClient(configuration)
    api_client.user_agent = agent
    leadership = Leadership(WriteGate(open_=False), elected=leader_election)
    kube = Kube(api_client, gate=leadership.gate)
    elector = None
    if leader_election:
        lease_client = client.ApiClient(client.Configuration.get_default_copy())  # its own connection: never queued behind writes
        lease_client.user_agent = agent
        elector = Elector(Kube(lease_client), lease_namespace(), identity, on_started=leadership.became_leader,
                          on_lost=exit_on_lost_lease(leadership))
    gang_apis = discover_gang_apis(kube)
    # a namespace the operator may create PodGroups in: a watched one, else `default` (cluster-wide rights)
    pod_group_topology = discover_pod_group_topology(kube, gang_apis, namespaces[0] if namespaces else "default")
    ctx = RenderContext(cluster_domain=cluster_domain, gang_apis=gang_apis, default_gang_scheduler=gang_scheduler,
                        pod_group_topology=pod_group_topology,
                        volcano_scheduler_name=volcano_scheduler_name, coscheduling_scheduler_name=coscheduling_scheduler_name,
                        # the image program jobs' init containers copy the launcher from (the chart's trainer image)
                        launcher_image=os.environ.get(LAUNCHER_IMAGE_ENV) or RenderContext.launcher_image)
    log.info("gang scheduling: %s served; jobs that name no gang scheduler use %s", ", ".join(sorted(gang_apis)) or "no PodGroup API",
             default_gang_scheduler(gang_scheduler, gang_apis))
    log.info("PodGroup schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling): %s",
             "kept by the API server" if pod_group_topology else "not served: spec.gang.topology needs Kueue")
    reconciler = Reconciler(kube=kube, view=ClusterView(), ctx=ctx, emit=kube.post_event,
                            generate_ssh_keys=generate_job_keys, settings=lifecycle or LifecycleSettings())
    kueue_on = reconciler.settings.kueue
    loops = JobLoops(reconciler, progress_interval, namespaces=namespaces, kueue=kueue_on, leadership=leadership)
    handlers.install(loops, kueue=kueue_on)
    kopf.on.login()(kopf_login(agent))

    if metrics_port:
        prometheus_client.start_http_server(metrics_port)

    def probe_state() -> ProbeState:
        return ProbeState(synced=loops.sync.synced, elected=elector is not None,
                          elector_alive=elector is not None and elector.alive, leading=leadership.leading)

    probes = ProbeServer(health_port, probe_state) if health_port else None

    pods_watched: list[asyncio.Task] = []

    @kopf.on.startup()
    async def _startup(settings: kopf.OperatorSettings, **_) -> None:
        configure_settings(settings)
        # Kopf posts Events of its own (a handler's failure): only the leader writes
        settings.posting.enabled = leadership.leading
        leadership.on_change(lambda leading: setattr(settings.posting, "enabled", leading))
        leadership.attach(asyncio.get_running_loop())
        asyncio.get_running_loop().create_task(loops.sync.wait_synced(), name="view fill")  # warm before leading
        pods_watched.append(asyncio.get_running_loop().create_task(watch_pods(settings, namespaces, loops.on_pod), name="pod watch"))
        if probes is not None:
            await probes.start()
        if elector is not None:
            elector.start()

    @kopf.on.cleanup()
    async def _cleanup(**_) -> None:
        """SIGTERM: stop writing, let the writes in flight end, and give the Lease up, so a standby takes over
        within a retry period (a rolling update hands over in seconds, not a lease duration)."""
        if elector is not None:
            def shut_writes() -> None:
                leadership.step_down()
                if not leadership.gate.drain(DRAIN_SECONDS):
                    log.warning("writes still in flight after %.0f s; releasing the Lease anyway", DRAIN_SECONDS)
            await asyncio.to_thread(elector.stop_and_release, shut_writes)
        if probes is not None:
            await probes.stop()
        for task in pods_watched:
            task.cancel()

    log.info("starting llm-training-operator", extra={"namespaces": namespaces or "*", "cluster_domain": cluster_domain,
                                                      "kueue": reconciler.settings.kueue, "identity": identity,
                                                      "leader_election": leader_election})
    kopf.run(
        standalone=True,  # no Kopf peering (not a Lease; 60 s after a crash): our own Lease decides who writes
        memories=EventOnlyMemories(),  # no per-object memory: only on.event handlers (kopf_memory.py)
        clusterwide=not namespaces,
        namespaces=namespaces,
    )
    return 0
