# Builders for stacked-storage headers on our own loop disks: md superblocks (this kernel has no md
# driver, so `mdadm --create` cannot run; `mdadm --examine` checks what we build), LVM physical
# volumes (pvcreate), LUKS1/LUKS2 (cryptsetup luksFormat, which needs no device-mapper) and a
# BitLocker volume header with its FVE metadata blocks.
import struct
import uuid

from disk_helpers import sh

MD_MAGIC = 0xA92B4EFC
BDE_GUID = bytes.fromhex("3bd66749292ed84a8399f6a339e3d001")


def md_superblock(version, member_size, raid_disks=2, level=1, set_uuid=None):
    """(offset, bytes) of a valid md superblock of `version` (0.90, 1.0, 1.1, 1.2) on a member."""
    if version == "0.90":
        offset = (member_size & ~0xFFFF) - 0x10000
        words = [0] * 1024
        words[0:4] = [MD_MAGIC, 0, 90, 0]
        words[5] = 0x12345678
        words[7], words[8], words[9], words[10] = level, (offset // 1024), raid_disks, raid_disks
        words[13:16] = [0x9ABCDEF0, 0x0FEDCBA9, 0x87654321]
        total = sum(words)
        words[38] = ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF  # sb_csum
        return offset, struct.pack("<1024I", *words)
    sectors = member_size // 512
    super_sector = {"1.0": ((sectors - 16) & ~7), "1.1": 0, "1.2": 8}[version]
    data_offset = 0 if version == "1.0" else 2048
    data_size = (super_sector if version == "1.0" else sectors - data_offset)
    sb = bytearray(256 + 2 * raid_disks)
    struct.pack_into("<II", sb, 0, MD_MAGIC, 1)
    sb[16:32] = (set_uuid or uuid.uuid4()).bytes
    sb[32:40] = b"fleetmd\0"
    struct.pack_into("<iI", sb, 72, level, 0)
    struct.pack_into("<Q", sb, 80, data_size)
    struct.pack_into("<I", sb, 92, raid_disks)
    struct.pack_into("<QQQ", sb, 128, data_offset, data_size, super_sector)
    struct.pack_into("<I", sb, 220, raid_disks)  # max_dev
    csum = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, ((csum & 0xFFFFFFFF) + (csum >> 32)) & 0xFFFFFFFF)
    return super_sector * 512, bytes(sb)


def write_at(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def bitlocker_volume(size, suspended=False):
    """[(offset, bytes)] of a Windows 7+ BitLocker volume header and its three FVE metadata blocks;
    each block holds one volume master key protected by a TPM, or by a clear key when suspended."""
    metas = [size // 4, size // 2, 3 * size // 4]
    metas = [off - off % 4096 for off in metas]
    boot = bytearray(512)
    boot[0:11] = b"\xeb\x58\x90-FVE-FS-"
    struct.pack_into("<HB", boot, 11, 512, 8)
    boot[0xA0:0xB0] = BDE_GUID
    struct.pack_into("<3Q", boot, 0xB0, *metas)
    boot[510:512] = b"\x55\xaa"
    vmk = bytearray(8 + 28)
    struct.pack_into("<HHHH", vmk, 0, len(vmk), 0x0002, 0x0008, 1)
    vmk[8:24] = uuid.uuid4().bytes
    struct.pack_into("<H", vmk, 8 + 26, 0x0000 if suspended else 0x0100)
    block = bytearray(64 + 48) + vmk
    block[0:8] = b"-FVE-FS-"
    struct.pack_into("<HH", block, 8, 64, 2)
    struct.pack_into("<IIII", block, 64, 48 + len(vmk), 1, 48, 48 + len(vmk))
    return [(0, bytes(boot))] + [(off, bytes(block)) for off in metas]


LVM_CONFIG = ('devices{{filter=["a|^{dev}$|","r|.*|"] use_devicesfile=0}} '
              'activation{{udev_sync=0 udev_rules=0}} backup{{backup=0 archive=0}}')


def pvcreate(device):
    sh("pvcreate", "-q", "--config", LVM_CONFIG.format(dev=device), device)


def luks_format(device, version):
    sh("sh", "-c", f"printf secret | cryptsetup luksFormat -q --type luks{version} --pbkdf pbkdf2 "
       f"--pbkdf-force-iterations 1000 --key-file - {device}")
