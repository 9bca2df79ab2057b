# The image catalogue (provenance in the layout, a directory listed) and Ed25519 signatures checked
# before a restore; all on regular files.
import datetime
import json
import os
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ansible_collections.fleetcast.imaging.plugins.module_utils import _version
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk.discover import BlockDevice
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import (
    capture, catalogue, format as fmt, info, restore, signing)

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _raw_disk(path, fill=b"x"):
    with open(path, "wb") as handle:
        handle.truncate(8 * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\nstart=2048, size=8192\n", text=True,
                   check=True, capture_output=True)
    subprocess.run(["mkfs.vfat", "-n", "CAT", "--offset", "2048", str(path), "4096"], check=True, capture_output=True)
    with open(path, "r+b") as handle:
        handle.seek(6 * MiB)
        handle.write(fill * 4096)
    return str(path)


def test_collection_version_matches_galaxy_yml():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        version = re.search(r"^version:\s*(\S+)", handle.read(), re.M).group(1)
    assert _version.COLLECTION_VERSION == version


def test_origin_names_source_disks_from_discovery():
    disk = BlockDevice(name="sdb", path="/dev/sdb", size=512 * MiB, sector_size=512, removable=False,
                       read_only=False, rotational=False, model="WD_BLACK SN770", serial="22411V800123",
                       transport="nvme", is_loop=False, backing_file=None)
    when = datetime.datetime(2026, 12, 1, 22, 15, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    found = catalogue.origin(["/dev/sdb", "/srv/vm.raw"], "lab desktops", devices=[disk], now=when, host="master")
    assert found == {"captured_at": "2026-12-01T21:15:03Z", "host": "master",
                     "collection_version": _version.COLLECTION_VERSION, "description": "lab desktops",
                     "disks": [{"index": 0, "source": "/dev/sdb", "model": "WD_BLACK SN770",
                                "serial": "22411V800123", "size": 512 * MiB},
                               {"index": 1, "source": "/srv/vm.raw", "model": None, "serial": None, "size": None}]}


def test_a_directory_is_listed_as_a_catalogue_old_images_included(tmp_path):
    store = tmp_path / "images"
    store.mkdir()
    first = capture.capture_to_file([_raw_disk(tmp_path / "a.raw")], str(store / "a.fcimg"), description="first")
    second = capture.capture_to_file([_raw_disk(tmp_path / "b.raw", b"y")], str(store / "b.img"))
    # an image written before provenance was recorded: the same layout without "origin"
    old_layout = dict(first.layout)
    del old_layout["origin"]
    with fmt.ImageReader(str(store / "a.fcimg")) as reader, open(store / "old.fcimg", "wb") as out:
        writer = fmt.ImageWriter(out, old_layout)
        for index in range(reader.chunk_count):
            writer.add(reader.record(index))
        writer.close()
    (store / "notes.txt").write_text("not an image")
    (store / "broken.fcimg").write_bytes(fmt.MAGIC + b"\0" * 100)

    listed = info.image_info(str(store))
    rows = {os.path.basename(row["path"]): row for row in listed["images"]}
    assert set(rows) == {"a.fcimg", "b.img", "old.fcimg"}
    assert [os.path.basename(r["path"]) for r in listed["images"]][0] == "old.fcimg"  # no capture time: first
    row = rows["a.fcimg"]
    assert row["image_id"] == first.image_id and row["description"] == "first"
    assert row["collection_version"] == _version.COLLECTION_VERSION and row["host"]
    assert datetime.datetime.strptime(row["captured_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert row["disks"][0]["size"] == 8 * MiB and row["disks"][0]["label"] == "gpt"
    assert {"disk": 0, "region": "partition 1", "filesystem": "vfat"}.items() <= row["filesystems"][0].items()
    assert rows["b.img"]["description"] is None and rows["b.img"]["image_id"] == second.image_id
    old = rows["old.fcimg"]
    assert (old["captured_at"], old["host"], old["collection_version"]) == (None, None, None)
    assert old["filesystems"] == row["filesystems"] and old["signature"] is None
    assert list(listed["unreadable"]) == [str(store / "broken.fcimg")]
    assert info.image_info(str(store / "a.fcimg"))["origin"]["description"] == "first"
    # the image id names the content: the same disk captured again, described otherwise, has the same id
    again = capture.capture_to_file([str(tmp_path / "a.raw")], str(tmp_path / "again.fcimg"), description="later")
    assert again.image_id == first.image_id and again.layout["origin"] != first.layout["origin"]


def _keys(tmp_path):
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "images.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return str(private), public.decode("ascii")


def test_signed_image_restores_and_bad_or_missing_signatures_are_refused_untouched(tmp_path):
    image = str(tmp_path / "disk.fcimg")
    manifest = capture.capture_to_file([_raw_disk(tmp_path / "disk.raw")], image)
    private, public = _keys(tmp_path)
    (tmp_path / "other").mkdir()
    dummy, other_public = _keys(tmp_path / "other")
    target = tmp_path / "target.raw"
    target.write_bytes(b"\xa5" * (8 * MiB))
    before = target.read_bytes()

    def restore_with(key, signature=None):
        return restore.restore_image(image, [str(target)], check_signature=lambda manifest: signing.verify(
            image, manifest.image_id, manifest.layout.get("origin"), key, signature))

    with pytest.raises(ValidationError) as missing:
        restore_with(public)
    assert str(missing.value) == (f"Image {image} is not signed (no {image}.sig) and a public key was given, so it "
                                  "is refused; sign it on the controller with fleetcast.imaging.image_sign.")
    signed = signing.sign_image(image, None, private)
    assert signed["changed"] and signed["dest"] == image + ".sig"
    assert signing.sign_image(image, None, private)["changed"] is False  # idempotent
    with pytest.raises(ValidationError, match=r"its signature .* was not made with the given public key \(SHA256:"):
        restore_with(other_public)
    forged = json.loads(open(image + ".sig").read())
    forged["image_id"] = "0" * 64
    (tmp_path / "forged.sig").write_text(json.dumps(forged))
    with pytest.raises(ValidationError, match=f"is for image {'0' * 64}, not for this image's id"):
        restore_with(public, str(tmp_path / "forged.sig"))
    # the same content with another capture record: the same image id, but the signature does not fit
    relabelled = str(tmp_path / "relabelled.fcimg")
    layout = dict(manifest.layout, origin=dict(manifest.layout["origin"], description="not what was signed"))
    with fmt.ImageReader(image) as reader, open(relabelled, "wb") as out:
        writer = fmt.ImageWriter(out, layout)
        for index in range(reader.chunk_count):
            writer.add(reader.record(index))
        assert writer.close().image_id == manifest.image_id
    with pytest.raises(ValidationError, match=r"^Image .*relabelled.fcimg is refused: its signature .*disk.fcimg.sig "
                                              r"covers another capture record \(time, host, source disks or "):
        signing.verify(relabelled, manifest.image_id, layout["origin"], public, image + ".sig")
    assert target.read_bytes() == before

    done = restore_with(public)
    assert done["changed"] and done["image_id"] == manifest.image_id
    by_id = signing.sign_image(None, manifest.image_id, private, dest=str(tmp_path / "by-id.sig"),
                               origin=info.image_info(image)["origin"])
    assert by_id["signature"] == signed["signature"]  # the controller needs only the id and the origin
    assert info.image_info(str(tmp_path))["images"][0]["signature"] == image + ".sig"


def _ansible(module, args, check=False):
    env = dict(os.environ, LC_ALL="C.UTF-8", ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"))
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible"), "localhost", "-m", f"fleetcast.imaging.{module}",
            "-a", json.dumps(args)] + (["--check"] if check else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    head, dummy, body = proc.stdout.partition(" => ")
    assert body, proc.stdout + proc.stderr
    return head, json.loads(body)


@pytest.mark.slow
def test_modules_list_sign_and_refuse_an_unsigned_restore(tmp_path):
    store = tmp_path / "images"
    store.mkdir()
    image = str(store / "lab.fcimg")
    capture.capture_to_file([_raw_disk(tmp_path / "disk.raw")], image, description="lab desktops")
    private, public = _keys(tmp_path)
    target = tmp_path / "target.raw"
    target.write_bytes(b"\xa5" * (8 * MiB))

    head, listed = _ansible("image_info", {"image": str(store)})
    assert "SUCCESS" in head and [row["description"] for row in listed["catalogue"]["images"]] == ["lab desktops"]
    head, failed = _ansible("image_restore", {"image": image, "targets": [str(target)], "public_key": public})
    assert "FAILED" in head and failed["msg"].startswith(f"Image {image} is not signed (no {image}.sig)")
    assert target.read_bytes() == b"\xa5" * (8 * MiB)
    head, signed = _ansible("image_sign", {"image": image, "private_key": private})
    assert "CHANGED" in head and signed["dest"] == image + ".sig" and os.path.exists(image + ".sig")
    with fmt.ImageReader(image) as reader:
        origin = reader.manifest.layout["origin"]
    assert signing.verify(image, signed["image_id"], origin, public)["key"] == signed["signature"]["key"]
    (tmp_path / "other").mkdir()
    dummy, stranger = _keys(tmp_path / "other")
    head, refused = _ansible("multicast_send", {"image": image, "interface": "lo", "session_key": "k" * 32,
                                                "public_key": stranger}, check=True)
    assert "FAILED" in head and refused["msg"].startswith(f"Image {image} is refused: its signature {image}.sig was "
                                                          f"not made with the given public key")


def test_verify_is_refused_for_a_directory(tmp_path):
    with pytest.raises(ValidationError, match=f"^{tmp_path} is a directory: verify one image at a time"):
        info.image_info(str(tmp_path), verify=True)
