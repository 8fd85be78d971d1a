"""SiteMonitoring: a site's Prometheus agent, registered from :mod:`components.monitoring.agent`."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.monitoring.agent import AgentArgs, render
from components.serving import object_name, register

TYPE = "edge:monitoring:SiteMonitoring"


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

        ns = register(f"{name}-namespace", manifests.pop("namespace"), child())
        self.resources: dict[str, pulumi.CustomResource] = {"namespace": ns}
        deployment = manifests.pop("deployment")
        for role, manifest in manifests.items():
            self.resources[role] = register(f"{name}-{role}", manifest, child(ns))
        # The pod starts once its namespace is isolated and its config, account and rights exist.
        self.resources["deployment"] = register(f"{name}-deployment", deployment, child(*self.resources.values()))
        self.namespace = object_name(ns)
        self.register_outputs({"namespace": self.namespace})
