#!/usr/bin/env bash
# Installs everything the tests, the lab and the benchmarks need on a fresh Debian machine:
# apt packages (targets run modules with Debian's python3 and its apt bindings) and a venv for the
# controller (ansible-core, test tools). Idempotent and quiet when all is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"

apt_packages=(
  python3 python3-venv python3-dev python3-parted python3-zstandard python3-hivex python3-numpy
  python3-cryptography python3-yaml libparted-dev pkg-config gcc openssh-client
  parted gdisk fdisk dosfstools mtools ntfs-3g e2fsprogs xfsprogs btrfs-progs util-linux zstd
  iproute2 nftables udpcast uftp partclone libhivex-bin
  mdadm cryptsetup-bin lvm2  # stacked-storage wipe tests: mdadm --examine, luksFormat, pvcreate
  # the lab's Debian root (demo, realistic-image test, benchmarks), built once and cached
  mmdebstrap debian-archive-keyring
  dnsmasq-base busybox-static
)
# `tools/bootstrap.sh e2e` (make e2e) also installs what the VM fleet and the boot path need:
# qemu with OVMF and iPXE ROMs, mmdebstrap for the Debian roots, GRUB images, xorriso for the ISO,
# and Debian's ipxe (undionly.kpxe, ipxe.efi) for PXE firmware that is not iPXE yet.
if [ "${1:-}" = "e2e" ]; then
  apt_packages+=(qemu-system-x86 qemu-utils ovmf ipxe-qemu ipxe mmdebstrap grub-common grub-pc-bin
                 grub-efi-amd64-bin xorriso)
fi
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The venv sees Debian's site-packages so that hivex (only packaged by Debian) is importable in tests;
# the pip packages below take precedence where both exist.
stamp="$venv/.fleetcast-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/tools/requirements.txt" "$stamp"; then
  echo "bootstrap: preparing $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/tools/requirements.txt"
  cp "$here/tools/requirements.txt" "$stamp"
fi

# ansible finds the collection as <path>/ansible_collections/fleetcast/imaging.
mkdir -p "$here/.build/collections/ansible_collections/fleetcast"
ln -sfn "$here" "$here/.build/collections/ansible_collections/fleetcast/imaging"
