"""What each interconnect profile needs in a worker pod: env, capabilities, device resources."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.v1alpha1 import NetworkSpec

DEFAULT_RDMA_RESOURCES = {
    "tcp": {},
    "infiniband": {"rdma/rdma_shared_device_a": 1},
    "roce": {"rdma/rdma_shared_device_a": 1},
    "efa": {"vpc.amazonaws.com/efa": 1},
}


@dataclass
class NetworkPlan:
    env: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    resources: dict[str, int | str] = field(default_factory=dict)


def plan_network(net: NetworkSpec) -> NetworkPlan:
    plan = NetworkPlan()
    env = plan.env
    if net.interfaces:
        ifnames = ",".join(net.interfaces)
        env["NCCL_SOCKET_IFNAME"] = ifnames
        env["GLOO_SOCKET_IFNAME"] = ifnames
    if net.profile == "tcp":
        env["NCCL_IB_DISABLE"] = "1"
    elif net.profile in ("infiniband", "roce"):
        env["NCCL_IB_DISABLE"] = "0"
        if net.ib_hcas:
            env["NCCL_IB_HCA"] = ",".join(net.ib_hcas)
        if net.profile == "roce":
            env["NCCL_IB_GID_INDEX"] = str(net.gid_index if net.gid_index is not None else 3)
        elif net.gid_index is not None:
            env["NCCL_IB_GID_INDEX"] = str(net.gid_index)
        plan.capabilities.append("IPC_LOCK")  # RDMA pins (locks) memory for registration
    elif net.profile == "efa":
        env.update({"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1", "NCCL_IB_DISABLE": "1"})
        plan.capabilities.append("IPC_LOCK")
    env.update(net.nccl_env)
    resources = net.rdma_resources if net.rdma_resources is not None else DEFAULT_RDMA_RESOURCES[net.profile]
    plan.resources = dict(resources)
    return plan
