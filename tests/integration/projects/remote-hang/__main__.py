"""One remote command that announces itself on the host, then runs for ``sleep`` seconds,
within a ``commandTimeout`` deadline."""

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
    dial_timeout_s=10,
)
sleep = config.get_int("sleep") or 0
cmd = remote.Command(
    "long-step",
    connection=conn,
    label=f"site 'lab' host {config.require('host')!r}",
    create=f"mkdir -p /var/lib/edgefleet && touch /var/lib/edgefleet/long-step-started\nsleep {sleep}\necho done\n",
    timeout_s=config.require_int("commandTimeout"),
)
pulumi.export("stdout", cmd.stdout)
