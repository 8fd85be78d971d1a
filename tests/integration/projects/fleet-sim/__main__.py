"""Simulated sites: one resource per host that "installs" in ``sim-seconds`` (site label), fails
when the site's label ``sim-fail`` is ``"true"``, and reads back as drifted while the file
``<simDir>/wiped-<host>`` exists (a host wiped behind Pulumi's back). Every install and
upgrade is appended to ``<simDir>/actions.log``: what would have touched a host."""

import time
from pathlib import Path

import pulumi
import yaml
from pulumi.dynamic import CreateResult, ReadResult, Resource, ResourceProvider


def _act(props, what):
    if props.get("simDir"):
        with open(Path(props["simDir"], "actions.log"), "a") as f:
            f.write(f"{what} {props['host']}\n")


class Install(ResourceProvider):
    def create(self, props):
        _act(props, "install")
        time.sleep(float(props["seconds"]))
        if props["fail"]:
            raise RuntimeError(f"site {props['site']}: simulated install failure")
        return CreateResult(id_=props["host"], outs={**props, "installed": True})

    def read(self, id_, props):
        wiped = Path(props["simDir"], f"wiped-{props['host']}").exists() if props.get("simDir") else False
        return ReadResult(id_, {**props, "installed": not wiped})

    def diff(self, _id, olds, news):
        from pulumi.dynamic import DiffResult

        changed = olds.get("installed") is False or any(olds.get(k) != news.get(k) for k in news if k != "installed")
        return DiffResult(changes=changed)

    def update(self, _id, olds, news):
        from pulumi.dynamic import UpdateResult

        _act(news, "upgrade")
        time.sleep(float(news["seconds"]))
        return UpdateResult(outs={**news, "installed": True})


class SimHost(Resource):
    def __init__(self, name, props, opts=None):
        super().__init__(Install(), name, {**props, "installed": None}, opts)


class SimSite(pulumi.ComponentResource):
    def __init__(self, site, sim_dir, opts=None):
        super().__init__("sim:fleet:Site", site["name"], None, opts)
        labels = site.get("labels") or {}
        for host in site["hosts"]:
            SimHost(
                f"{site['name']}-{host['name']}",
                {
                    "site": site["name"],
                    "host": host["name"],
                    "simDir": sim_dir,
                    "version": site["distribution"]["version"],
                    "seconds": labels.get("sim-seconds", "0"),
                    "fail": labels.get("sim-fail") == "true",
                },
                pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})


config = pulumi.Config()
inventory = yaml.safe_load(Path(config.require("inventory")).read_text())
wanted = config.get("site") or ""
if not wanted and config.get_bool("siteStacks"):
    raise pulumi.RunError("config fleetsim:siteStacks: this stack only holds the site stacks' shared config")
sites = [s for s in inventory["sites"] if not wanted or s["name"] == wanted]
if not sites:
    raise pulumi.RunError(f"config fleetsim:site: {wanted!r} is not a site of the inventory")
fleet = pulumi.ComponentResource("sim:fleet:Fleet", "fleet")
for s in sites:
    SimSite(s, config.get("simDir") or "", pulumi.ResourceOptions(parent=fleet))
pulumi.export("sites", [s["name"] for s in sites])
