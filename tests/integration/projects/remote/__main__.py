"""Drives components.remote against a lab host: an upload, a command with a secret in its
environment, an update through triggers, and a delete script."""

from pathlib import Path

import pulumi

from components import remote

config = pulumi.Config()
conn = remote.connection(
    host=config.require("host"),
    port=22,
    user="root",
    private_key=pulumi.Output.secret(Path(config.require("keyFile")).read_text()),
    host_key=config.require("hostKey"),
    dial_timeout_s=config.get_int("dialTimeout") or 60,
)
label = f"site 'lab' host {config.require('host')!r}"
upload = remote.CopyToRemote(
    "payload",
    connection=conn,
    source=config.require("payload"),
    remote_path="/var/lib/edgefleet/payload.txt",
    label=label,
    triggers=[config.get("generation") or "1"],
)
cmd = remote.Command(
    "marker",
    connection=conn,
    label=label,
    create='mkdir -p /etc/edgefleet && printf "%s" "$(cat /var/lib/edgefleet/payload.txt)" > /etc/edgefleet/marker'
    ' && test -n "$JOIN_TOKEN" && echo created\n',
    update='printf "%s" "$(cat /var/lib/edgefleet/payload.txt)" > /etc/edgefleet/marker && echo updated\n',
    delete="rm -f /etc/edgefleet/marker /var/lib/edgefleet/payload.txt\n",
    environment={"JOIN_TOKEN": config.require_secret("token")},
    triggers=[config.get("generation") or "1"],
    secret_stdout=False,
    opts=pulumi.ResourceOptions(depends_on=[upload]),
)
pulumi.export("stdout", cmd.stdout)
