"""MicroShift renderer: config.yaml against the documented fields, single-node only,
pull secret, firewall rules, greenboot check, RPM and rpm-ostree installs."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import yaml

from components.distributions import DistributionError, NodeSpec, microshift
from components.distributions.artifacts import UploadedArtifact
from components.distributions.microshift import MicroShiftDriver
from tests.unit.dist_fixtures import node_with

MICROSHIFT = MicroShiftDriver()

# /etc/microshift/config.yaml fields (packaging/microshift/config.yaml of openshift/microshift);
# None = free-form (``kubelet`` is passed through to the KubeletConfiguration).
SCHEMA: dict = {
    "apiServer": {
        "advertiseAddress": None,
        "auditLog": {"maxFileAge": None, "maxFileSize": None, "maxFiles": None, "profile": None},
        "namedCertificates": None,
        "subjectAltNames": None,
        "tls": None,
    },
    "debugging": {"logLevel": None},
    "dns": {"baseDomain": None},
    "etcd": {"memoryLimitMB": None},
    "ingress": {
        "status": None,
        "ports": None,
        "listenAddress": None,
        "routeAdmissionPolicy": None,
        "defaultHTTPVersion": None,
        "forwardedHeaderPolicy": None,
        "httpCompression": None,
        "httpEmptyRequestsPolicy": None,
        "logEmptyRequests": None,
        "tuningOptions": None,
    },
    "kubelet": None,
    "manifests": {"kustomizePaths": None},
    "network": {"clusterNetwork": None, "serviceNetwork": None, "serviceNodePortRange": None, "cniPlugin": None},
    "node": {"hostnameOverride": None, "nodeIP": None, "nodeIPv6": None},
    "storage": {"driver": None, "optionalCsiComponents": None},
}

NODE = node_with(site="store-7", host="ms-1", address="192.168.50.10", tls_sans=["ms-1.store-7.example"])
GATEWAY = dataclasses.replace(NODE, host="ms-gw", profile="gateway")
RPMS = [
    UploadedArtifact("microshift", "rpms/microshift-4.19.0-1.el9.x86_64.rpm", "1" * 64, "/a/microshift.rpm"),
    UploadedArtifact(
        "microshift-networking", "rpms/microshift-networking-4.19.0-1.el9.x86_64.rpm", "2" * 64, "/a/net.rpm"
    ),
]


def assert_schema(data: object, schema: object, path: str = "") -> None:
    if schema is None:
        return
    assert isinstance(data, dict), path
    unknown = set(data) - set(schema)  # type: ignore[arg-type]
    assert not unknown, f"{path or 'config'}: undocumented fields {unknown}"
    for key, value in data.items():
        assert_schema(value, schema[key], f"{path}.{key}")  # type: ignore[index]


@pytest.mark.parametrize("node", [NODE, GATEWAY], ids=["standard", "gateway"])
def test_config_uses_only_documented_fields(node: NodeSpec) -> None:
    cfg = yaml.safe_load(microshift.render_config(node))
    assert_schema(cfg, SCHEMA)
    assert cfg["node"] == {"hostnameOverride": node.host, "nodeIP": node.address}
    assert cfg["network"] == {"clusterNetwork": [node.cluster_cidr], "serviceNetwork": [node.service_cidr]}
    sans = cfg["apiServer"]["subjectAltNames"]
    assert sans[0] == node.address and "ms-1.store-7.example" in sans
    assert cfg["debugging"]["logLevel"] == "Normal" and cfg["dns"]["baseDomain"].startswith(node.site)


def test_gateway_removes_the_router_and_reserves_memory() -> None:
    cfg = yaml.safe_load(microshift.render_config(GATEWAY))
    assert cfg["ingress"]["status"] == "Removed" and cfg["storage"] == {"driver": "none"}
    assert cfg["kubelet"]["evictionHard"]["memory.available"] == "100Mi"
    assert yaml.safe_load(microshift.render_config(NODE))["ingress"]["status"] == "Managed"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"ha": True}, "topology"),
        ({"role": "agent", "first_server": False, "server_url": "https://192.168.50.10:6443"}, "role"),
        ({"service_manager": "supervised"}, "service_manager"),
        ({"extra_args": ("--debug",)}, "extra_args"),
        ({"data_dir": "/data/microshift"}, "data_dir"),
    ],
)
def test_anything_but_one_systemd_node_is_refused(change: dict, field: str) -> None:
    with pytest.raises(DistributionError) as err:
        MICROSHIFT.render_install(dataclasses.replace(NODE, **change), RPMS)
    assert err.value.field.endswith(field) and err.value.fix
    if field == "topology":
        assert "single-node only" in err.value.message and "k3s or k0s" in err.value.fix


def test_firewall_trusts_the_pod_network_and_opens_the_api() -> None:
    script = MICROSHIFT.render_install(NODE, RPMS)
    for rule in (
        "fw_add source trusted 10.42.0.0/16",
        "fw_add source trusted 169.254.169.1",
        "fw_add port public 6443/tcp",
        "fw_add port public 80/tcp",
        "fw_add port public 443/tcp",
    ):
        assert rule in script
    gateway = MICROSHIFT.render_install(GATEWAY, RPMS)
    assert "fw_add port public 6443/tcp" in gateway
    assert "port public 80/tcp" not in gateway and "port public 443/tcp" not in gateway


def test_pull_secret_comes_from_the_environment_into_a_private_file() -> None:
    script = MICROSHIFT.render_install(NODE, RPMS)
    assert microshift.TOKEN_ENV == "MICROSHIFT_PULL_SECRET"
    assert "write_secret MICROSHIFT_PULL_SECRET /etc/crio/openshift-pull-secret" in script
    assert "does not look like a pull secret" in script


def test_rpms_install_with_dnf_or_layer_with_rpm_ostree() -> None:
    script = MICROSHIFT.render_install(NODE, RPMS)
    assert "RPMS=(/a/microshift.rpm /a/net.rpm)" in script
    assert 'dnf install -y "${RPMS[@]}"' in script
    assert 'rpm-ostree install --idempotent --allow-inactive "${RPMS[@]}"' in script
    assert microshift.REBOOT_MARKER in script
    with pytest.raises(DistributionError, match="not an RPM"):
        images = UploadedArtifact("microshift-images", "images.tar", "3" * 64, "/a/i.tar")
        MICROSHIFT.render_install(NODE, [*RPMS, images])
    with pytest.raises(DistributionError, match="no 'microshift' RPM"):
        MICROSHIFT.render_install(NODE, RPMS[1:])


def test_greenboot_check_is_bounded_and_follows_the_profile() -> None:
    files = MICROSHIFT.config_files(NODE)
    check, mode = files["/etc/greenboot/check/required.d/40-microshift-edgefleet.sh"]
    assert mode == 0o755 and f"TIMEOUT={microshift.GREENBOOT_TIMEOUT_S}" in check
    assert "openshift-ingress" in check and "get --raw /readyz" in check
    gw = microshift.render_greenboot_check(GATEWAY)
    assert "openshift-ingress" not in gw and "openshift-storage" not in gw and "openshift-ovn-kubernetes" in gw


def test_mirrors_become_a_registries_conf_drop_in() -> None:
    node = dataclasses.replace(
        NODE, registry_mirrors={"quay.io": ["https://mirror.store-7:5000", "http://10.9.9.9:5000"]}
    )
    conf = tomllib.loads(MICROSHIFT.config_files(node)[microshift.MIRRORS_FILE][0])
    (reg,) = conf["registry"]
    assert reg["prefix"] == reg["location"] == "quay.io"
    assert reg["mirror"] == [{"location": "mirror.store-7:5000"}, {"location": "10.9.9.9:5000", "insecure": True}]


def test_kubeconfig_is_the_one_generated_for_the_node_address() -> None:
    assert MICROSHIFT.kubeconfig_path(NODE) == "/var/lib/microshift/resources/kubeadmin/192.168.50.10/kubeconfig"
    assert MICROSHIFT.render_join_token(NODE) is None


def test_uninstall_cleans_data_keeps_images_and_removes_packages() -> None:
    script = MICROSHIFT.render_uninstall(NODE)
    assert "echo 1 | microshift-cleanup-data --all --keep-images" in script
    assert 'dnf remove -y "${packages[@]}"' in script and 'rpm-ostree uninstall "${packages[@]}"' in script
    assert "fw_remove source trusted 10.42.0.0/16" in script


def test_kubelet_protects_kernel_defaults_unless_left_to_the_host() -> None:
    assert yaml.safe_load(microshift.render_config(NODE))["kubelet"] == {"protectKernelDefaults": True}
    assert yaml.safe_load(microshift.render_config(GATEWAY))["kubelet"]["protectKernelDefaults"] is True
    assert microshift.SYSCTL_FILE in MICROSHIFT.config_files(NODE)
    assert "ensure_sysctl kernel.panic_on_oops 1\n" in MICROSHIFT.render_install(NODE, RPMS)
    lax = dataclasses.replace(NODE, protect_kernel_defaults=False)
    assert "kubelet" not in yaml.safe_load(microshift.render_config(lax))
    assert microshift.SYSCTL_FILE not in MICROSHIFT.config_files(lax)
    assert "ensure_sysctl kernel." not in MICROSHIFT.render_install(lax, RPMS)
