"""SiteMonitoring: a site's Prometheus agent, registered from :mod:`components.monitoring.agent`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.monitoring.agent import AgentArgs, render

TYPE = "edge:monitoring:SiteMonitoring"

_CLASSES: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _register(name: str, manifest: Mapping[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    cls = _CLASSES[(manifest["apiVersion"], manifest["kind"])]
    return cls(name, **{_snake(k): v for k, v in manifest.items() if k not in ("apiVersion", "kind")}, opts=opts)


class SiteMonitoring(pulumi.ComponentResource):
    """The site's agent: namespace (PSS restricted), default-deny and egress NetworkPolicies,
    ServiceAccount and its kubelet-metrics RBAC, a headless Service per scraped namespace, the
    prometheus.yml ConfigMap and the Deployment. ``provider`` is the site's Kubernetes provider;
    put the site's InferenceServices in ``opts.depends_on`` (their namespaces get the headless
    Services)."""

    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: AgentArgs, provider: k8s.Provider, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, {"site": args.site, "hardware_class": args.hardware_class}, opts)
        manifests = render(args)

        def child(*depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(depends_on))

        ns = _register(f"{name}-namespace", manifests.pop("namespace"), child())
        self.resources: dict[str, pulumi.CustomResource] = {"namespace": ns}
        deployment = manifests.pop("deployment")
        for role, manifest in manifests.items():
            self.resources[role] = _register(f"{name}-{role}", manifest, child(ns))
        # The pod starts once its namespace is isolated and its config, account and rights exist.
        self.resources["deployment"] = _register(f"{name}-deployment", deployment, child(*self.resources.values()))
        self.namespace = ns.metadata.name
        self.register_outputs({"namespace": self.namespace})
