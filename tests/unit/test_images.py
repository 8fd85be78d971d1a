"""The offline image builder: deterministic OCI archives, Debian and wheel inputs, definitions,
the cache. No network, no root: real images are built in tests/integration/test_images.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from images import oci, sources
from images.build import Builder, read_index, write_index
from images.spec import ImageError, image_names, load, pinned_reference

REPO = Path(__file__).resolve().parents[2]


def make_tree(root: Path, mtime: int, umask_mode: int) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hello\n")
    (root / "etc/motd").chmod(umask_mode)
    os.link(root / "etc/motd", root / "etc/motd.hard")
    (root / "usr/bin/alias").symlink_to("tool")
    (root / "tmp").mkdir(mode=0o777)
    (root / "tmp").chmod(0o1777)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


RUNTIME = oci.RuntimeConfig(
    user="65532:65532", entrypoint=["/usr/bin/tool"], cmd=["--x"], env=["A=1"], exposed_ports=("8080/tcp",)
)


def build_archive(tmp: Path, tree: Path, name: str = "demo") -> tuple[Path, oci.Blob]:
    blobs = tmp / "blobs"
    layer = oci.write_layer(tree, blobs, "demo layer")
    manifest = oci.write_image(blobs, RUNTIME, [layer])
    config_digest = json.loads((blobs / manifest.digest[7:]).read_text())["config"]["digest"]
    archive = tmp / f"{name}.oci.tar"
    oci.write_archive(
        archive,
        blobs,
        oci.image_index(manifest, f"registry.edgefleet.local/edgefleet/{name}", "latest"),
        [manifest.digest, config_digest, layer.blob.digest],
    )
    return archive, manifest


def test_same_tree_gives_the_same_bytes_whatever_the_mtimes(tmp_path):
    first = build_archive(tmp_path / "a", make_tree(tmp_path / "t1", 1_000_000, 0o644))
    second = build_archive(tmp_path / "b", make_tree(tmp_path / "t2", 2_000_000_000, 0o644))
    assert first[1].digest == second[1].digest
    assert oci.sha256_file(first[0]) == oci.sha256_file(second[0])


def test_a_changed_mode_or_content_changes_the_digest(tmp_path):
    base = build_archive(tmp_path / "a", make_tree(tmp_path / "t1", 1, 0o644))[1].digest
    assert build_archive(tmp_path / "b", make_tree(tmp_path / "t2", 1, 0o600))[1].digest != base
    tree = make_tree(tmp_path / "t3", 1, 0o644)
    (tree / "etc/motd").write_text("changed\n")
    assert build_archive(tmp_path / "c", tree)[1].digest != base


def test_layer_tar_is_sorted_root_owned_with_fixed_mtime_and_keeps_special_modes(tmp_path):
    tree = make_tree(tmp_path / "t", 12345, 0o644)
    with (tmp_path / "layer.tar").open("wb") as out:
        oci.write_layer_tar(tree, out)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["etc", "etc/motd", "etc/motd.hard", "tmp", "usr", "usr/bin", "usr/bin/alias", "usr/bin/tool"]
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", oci.EPOCH)}
    by_name = {m.name: m for m in members}
    assert by_name["tmp"].mode == 0o1777 and by_name["usr/bin/tool"].mode == 0o755
    assert by_name["etc/motd.hard"].islnk() and by_name["etc/motd.hard"].linkname == "etc/motd"
    assert by_name["usr/bin/alias"].issym() and by_name["usr/bin/alias"].linkname == "tool"


def test_archive_is_an_oci_layout_whose_digests_match_their_bytes(tmp_path):
    archive, manifest = build_archive(tmp_path, make_tree(tmp_path / "t", 1, 0o644))
    image = oci.read_archive(archive)
    assert image.manifest_digest == manifest.digest
    assert image.names == (
        "registry.edgefleet.local/edgefleet/demo:latest",
        f"registry.edgefleet.local/edgefleet/demo@{manifest.digest}",
    )
    assert image.config["config"]["User"] == "65532:65532"
    assert image.config["config"]["Entrypoint"] == ["/usr/bin/tool"]
    assert image.config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        manifest_bytes = tar.extractfile(f"blobs/sha256/{manifest.digest[7:]}").read()
    assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == manifest.digest
    assert index["manifests"][0]["annotations"][oci.ANNOTATION_REF_NAME] == "latest"


def test_reading_an_archive_with_a_tampered_layer_fails(tmp_path):
    archive, manifest = build_archive(tmp_path, make_tree(tmp_path / "t", 1, 0o644))
    layer = json.loads((tmp_path / "blobs" / manifest.digest[7:]).read_text())["layers"][0]["digest"][7:]
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as tar:
        for member, data in members:
            if member.name.endswith(layer):
                data = data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]
            tar.addfile(member, None if data is None else io.BytesIO(data))
    with pytest.raises(oci.LayoutError, match="does not match its bytes"):
        oci.read_archive(tampered)


def test_parse_depends_keeps_alternatives_and_drops_versions_and_arch_qualifiers():
    assert sources.parse_depends("libc6 (>= 2.34), media-types | mime-support, python3:any (>= 3.9~)") == (
        ("libc6",),
        ("media-types", "mime-support"),
        ("python3",),
    )


def pkg(name: str, depends: str = "") -> sources.DebPackage:
    return sources.DebPackage(name, "1.0", hashlib.sha256(name.encode()).hexdigest(), sources.parse_depends(depends))


INDEX = {
    p.name: p
    for p in [
        pkg("app", "libc6, media-types | mime-support, readline-common"),
        pkg("libc6", "libgcc-s1"),
        pkg("libgcc-s1", "libc6"),
        pkg("media-types"),
        pkg("mime-support", "perl"),
        pkg("readline-common", "dpkg (>= 1.15.4) | install-info"),
        pkg("broken", "virtual-only"),
    ]
}


def fake_show(names):
    return {name: INDEX[name] for name in names if name in INDEX}


def test_resolve_takes_the_closure_with_first_alternatives_and_honours_excludes():
    resolved = sources.resolve(["app"], ["dpkg"], "image.yaml", show=fake_show)
    assert [p.name for p in resolved] == ["app", "libc6", "libgcc-s1", "media-types", "readline-common"]


def test_resolve_names_an_unsatisfiable_dependency_and_its_parent():
    with pytest.raises(ImageError) as exc:
        sources.resolve(["broken"], [], "images/x/image.yaml", show=fake_show)
    assert str(exc.value).startswith("images/x/image.yaml: debian.packages: virtual-only (needed by broken)")
    assert "(fix: " in str(exc.value)


def test_lock_pins_the_inference_requirements_exactly():
    locked = {w.name: w.version for w in sources.read_lock(REPO / "images/inference/wheels.lock")}
    wanted = {}
    for line in (REPO / "inference/requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            wanted[match[1].lower().replace("_", "-")] = match[2]
    assert wanted and {name: locked.get(name) for name in wanted} == wanted


def test_a_lock_line_without_a_hash_is_refused_with_file_and_line(tmp_path):
    lock = tmp_path / "wheels.lock"
    lock.write_text("# comment\nnumpy==2.4.6\n")
    with pytest.raises(ImageError, match=r"wheels\.lock: line 2: 'numpy==2\.4\.6' is not .*\(fix: "):
        sources.read_lock(lock)


def test_install_wheel_unpacks_purelib_and_platlib_and_leaves_scripts_out(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/__init__.py", "X = 1\n")
        archive.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
        archive.writestr("demo-1.0.data/purelib/extra.py", "Y = 2\n")
        archive.writestr("demo-1.0.data/scripts/demo-cli", "#!python\n")
        info = zipfile.ZipInfo("demo/run.sh")
        info.external_attr = 0o755 << 16
        archive.writestr(info, "#!/bin/sh\n")
    site = tmp_path / "site"
    sources.install_wheel(wheel, site)
    found = sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())
    assert found == ["demo-1.0.dist-info/METADATA", "demo/__init__.py", "demo/run.sh", "extra.py"]
    assert (site / "demo/run.sh").stat().st_mode & 0o777 == 0o755
    assert (site / "extra.py").stat().st_mode & 0o777 == 0o644


def test_every_definition_loads_and_names_registry_references():
    assert {"inference", "pause", "client"} <= set(image_names())
    for name in image_names():
        load(name)
    assert (
        pinned_reference("pause", "sha256:" + "a" * 64) == "registry.edgefleet.local/edgefleet/pause@sha256:" + "a" * 64
    )


def dockerfile_final_stage() -> dict:
    text = (REPO / "inference/Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    env_block = re.search(r"^ENV (.*?)(?=^\S)", final, re.S | re.M)[1]
    env = dict(re.findall(r"(\w+)=(\S+)", env_block.replace("\\\n", " ")))
    return {
        "user": re.search(r"^USER (\S+)", final, re.M)[1],
        "entrypoint": json.loads(re.search(r"^ENTRYPOINT (.*)$", final, re.M)[1]),
        "cmd": json.loads(re.search(r"^CMD (.*)$", final, re.M)[1]),
        "workdir": re.search(r"^WORKDIR (\S+)", final, re.M)[1],
        "expose": re.search(r"^EXPOSE (\d+)", final, re.M)[1],
        "env": env,
    }


def test_inference_definition_runs_what_the_dockerfile_describes():
    docker, config = dockerfile_final_stage(), load("inference").config
    assert config.user == docker["user"] == "65532:65532"
    assert config.entrypoint == docker["entrypoint"] and config.cmd == docker["cmd"]
    assert config.working_dir == docker["workdir"] and config.exposed_ports == [f"{docker['expose']}/tcp"]
    # PATH differs on purpose: the wheels are in Debian's site directory, not in a venv.
    assert {k: v for k, v in docker["env"].items() if k != "PATH"} == {
        k: v for k, v in config.env.items() if k != "PATH"
    }


def test_a_bad_definition_is_reported_with_file_field_and_fix(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/image.yaml").write_text(
        "description: x\nlayers: [{dirs: [{path: tmp}]}]\nconfig: {user: nonroot, entrypoint: [/x]}\n"
    )
    with pytest.raises(ImageError, match=r"bad/image\.yaml: config\.user: .*is not numeric uid\[:gid\] \(fix: "):
        load("bad", tmp_path)
    with pytest.raises(ImageError, match=r"image\.yaml: name: no image definition 'nope' \(fix: use one of bad\)"):
        load("nope", tmp_path)
    (tmp_path / "bad/image.yaml").write_text(
        "description: x\nlayers: [{dirs: [{path: ../etc}]}]\nconfig: {user: '1', entrypoint: [/x]}\n"
    )
    with pytest.raises(ImageError, match=r"layers\.0\.dirs\.0\.path: .*not a path inside the image"):
        load("bad", tmp_path)


@pytest.fixture
def small_image(tmp_path):
    """A definition that needs neither apt nor the network: repository files, a dir and a link."""
    images = tmp_path / "images"
    (images / "small").mkdir(parents=True)
    (images / "small/image.yaml").write_text(
        "description: test image\n"
        "layers:\n"
        "  - copy: [{src: content, dst: opt/content}]\n"
        "    dirs: [{path: tmp, mode: '1777'}]\n"
        "    symlinks: [{path: usr/bin/content, target: /opt/content/run.sh}]\n"
        "config: {user: '65532:65532', entrypoint: [/usr/bin/content]}\n"
    )
    repo = tmp_path / "repo"
    (repo / "content").mkdir(parents=True)
    (repo / "content/run.sh").write_text("#!/bin/sh\n")
    (repo / "content/__pycache__").mkdir()
    (repo / "content/__pycache__/junk.pyc").write_bytes(b"\0")
    return images, repo


def test_second_build_is_cached_and_a_changed_input_rebuilds_and_prunes(small_image, tmp_path):
    images, repo = small_image
    builder = Builder(tmp_path / "cache", log=lambda _: None, images_dir=images, repo=repo)
    first = builder.build("small")
    again = builder.build("small")
    assert not first.cached and again.cached and again.manifest_digest == first.manifest_digest
    image = oci.read_archive(first.archive)
    assert image.manifest_digest == first.manifest_digest and image.config["config"]["User"] == "65532:65532"
    assert first.archive_sha256 == (first.archive.parent / "small.oci.tar.sha256").read_text().split()[0]

    (repo / "content/run.sh").write_text("#!/bin/sh\necho changed\n")
    changed = builder.build("small")
    assert not changed.cached and changed.manifest_digest != first.manifest_digest
    assert not first.archive.exists() and changed.archive.exists()  # the older archive is pruned
    assert len(list((tmp_path / "cache/small/blobs").iterdir())) == 1  # only the kept layer


def test_a_corrupted_cached_archive_is_rebuilt(small_image, tmp_path):
    images, repo = small_image
    builder = Builder(tmp_path / "cache", log=lambda _: None, images_dir=images, repo=repo)
    first = builder.build("small")
    with first.archive.open("r+b") as handle:
        handle.seek(600)
        handle.write(b"\xff")
    again = builder.build("small")
    assert not again.cached and again.archive_sha256 == first.archive_sha256


def test_pycache_in_the_repository_changes_neither_key_nor_layer(small_image, tmp_path):
    images, repo = small_image
    builder = Builder(tmp_path / "cache", log=lambda _: None, images_dir=images, repo=repo)
    first = builder.build("small")
    (repo / "content/__pycache__/junk.pyc").write_bytes(b"different")
    assert builder.build("small").cached
    layer_digest = json.loads((first.archive.parent / "image.json").read_text())["layers"][0]["digest"]
    with (
        tarfile.open(first.archive) as tar,
        tarfile.open(fileobj=tar.extractfile(f"blobs/sha256/{layer_digest[7:]}")) as layer,
    ):
        assert "opt/content/__pycache__" not in layer.getnames()
        assert layer.getmember("tmp").mode == 0o1777


def test_images_json_merges_builds_and_reads_back(small_image, tmp_path):
    images, repo = small_image
    built = Builder(tmp_path / "cache", log=lambda _: None, images_dir=images, repo=repo).build("small")
    index = tmp_path / "cache/images.json"
    index.write_text(json.dumps({"images": {"other": {"digest": "sha256:" + "b" * 64}}}))
    write_index(index, [built])
    entries = read_index(index)
    assert set(entries) == {"other", "small"}
    assert entries["small"]["reference"] == f"registry.edgefleet.local/edgefleet/small@{built.manifest_digest}"
    assert entries["small"]["digest"] == oci.read_archive(Path(entries["small"]["archive"])).manifest_digest


def test_the_callers_umask_does_not_change_the_image(small_image, tmp_path):
    images, repo = small_image
    digests = []
    for umask in (0o022, 0o077):
        previous = os.umask(umask)
        try:
            builder = Builder(tmp_path / f"cache-{umask:o}", log=lambda _: None, images_dir=images, repo=repo)
            digests.append(builder.build("small").manifest_digest)
        finally:
            os.umask(previous)
    assert digests[0] == digests[1]


def test_cli_lists_images_and_refuses_an_unknown_name_without_a_traceback():
    listed = subprocess.run([str(REPO / "scripts/build-images"), "--list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.split() == image_names()
    wrong = subprocess.run([str(REPO / "scripts/build-images"), "nope"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unknown image nope (fix: use one of" in wrong.stderr
    assert "Traceback" not in wrong.stderr
