"""A real program for the toolchain tests: a dynamic resource (the python provider host the
remote commands run in), a Kubernetes object rendered to a directory, a config secret."""

import platform

import pulumi
import pulumi_kubernetes as k8s
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class _GreetingProvider(ResourceProvider):
    def create(self, props):
        return CreateResult(
            id_=props["who"], outs={**props, "text": f"hello from {props['who']} on {platform.system()}"}
        )

    def diff(self, _id, olds, news):
        return DiffResult(changes=olds.get("generation") != news.get("generation"), replaces=["generation"])

    def update(self, _id, olds, news):
        return UpdateResult(outs={**news, "text": olds["text"]})


class Greeting(Resource):
    text: pulumi.Output[str]

    def __init__(self, name, who, generation):
        super().__init__(_GreetingProvider(), name, {"who": who, "generation": generation, "text": None})


config = pulumi.Config()
greeting = Greeting("greeting", pulumi.get_stack(), config.get("generation") or "1")
renderer = k8s.Provider("render", render_yaml_to_directory=config.require("renderDir"))
k8s.core.v1.ConfigMap(
    "greeting",
    metadata={"name": "greeting", "namespace": "edge"},
    data={"greeting": greeting.text},
    opts=pulumi.ResourceOptions(provider=renderer),
)
pulumi.export("greeting", greeting.text)
pulumi.export("token", config.get_secret("token"))
