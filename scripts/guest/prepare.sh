#!/bin/sh
# Prepare the pieces of a real-kernel test guest, once per machine.
#
# Usage: scripts/guest/prepare.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $GVM_VGPU_TEST_CACHE, else <repo>/.cache/guest.
# On success prints the directory holding the prepared guest, which contains:
#   vmlinuz            Debian's kernel for the ABI the linux-image-amd64 metapackage names
#   modules/*.ko       vfio, vfio_iommu_type1, mdev and the virtio chain, uncompressed
#   modules/mtty.ko    the kernel's mtty sample parent, built out of tree from linux-source-6.1
#   abi                the kernel ABI (e.g. 6.1.0-56-amd64)
#   stamp              written last: its presence means everything above is complete
#
# Idempotent: when the stamp for the current ABI exists it prints the directory and
# exits at once. The kernel ABI is never pinned: it is derived from
# `apt-cache depends linux-image-amd64` (falling back to the newest stamp when apt's
# lists are unavailable).
#
# Exit codes: 0 ready; 3 the kernel packages could not be found or fetched (callers
# turn this into a skipped test); anything else is a real failure.
set -eu

die() { echo "prepare.sh: $*" >&2; exit 1; }
unavailable() { echo "prepare.sh: kernel packages unavailable: $*" >&2; exit 3; }

script_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
cache=${1:-${GVM_VGPU_TEST_CACHE:-$repo/.cache/guest}}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# Virtio modules are for later users of the harness (virtio-serial ports); the
# vfio/mdev chain is what the conformance suite needs. Order matters: insmod order.
MDEV_MODULES="vfio vfio_iommu_type1 mdev"
VIRTIO_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console"

# 1. Which kernel ABI does Debian currently ship?
abi=""
if command -v apt-cache >/dev/null 2>&1; then
    abi=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)\(-unsigned\)\{0,1\}$/\1/p' | head -n1)
fi
if [ -z "$abi" ]; then
    # No apt lists: reuse the newest complete guest, if any.
    newest=$(ls -1t "$cache"/*/stamp 2>/dev/null | head -n1 || true)
    if [ -n "$newest" ]; then
        dirname "$newest"
        exit 0
    fi
    unavailable "apt-cache does not know linux-image-amd64 (run apt-get update)"
fi

out="$cache/$abi"
if [ -f "$out/stamp" ]; then
    echo "$out"
    exit 0
fi

echo "prepare.sh: preparing guest for kernel $abi in $out" >&2
work="$cache/work-$abi"
debs="$cache/debs"
mkdir -p "$work" "$debs" "$out/modules"

# 2. Fetch the packages (apt-get download leaves them in the current directory).
image_pkg="linux-image-$abi"
hdr_pkg="linux-headers-$abi"
common_pkg="linux-headers-$(echo "$abi" | sed 's/-amd64$//')-common"
version=$(apt-cache show "$image_pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
[ -n "$version" ] || unavailable "apt-cache has no version of $image_pkg"
series=$(echo "$abi" | sed 's/^\([0-9]*\.[0-9]*\).*/\1/')
kbuild_pkg="linux-kbuild-$series"
source_pkg="linux-source-$series"

fetch() {
    pkg=$1
    # apt-get download names files <pkg>_<version with : escaped>_<arch>.deb
    if ls "$debs/${pkg}"_*.deb >/dev/null 2>&1; then return 0; fi
    (cd "$debs" && apt-get download "$pkg=$version" >&2) ||
        unavailable "apt-get download $pkg=$version failed"
}
for p in "$image_pkg" "$hdr_pkg" "$common_pkg" "$kbuild_pkg" "$source_pkg"; do
    fetch "$p"
done
deb() { ls "$debs/${1}"_*.deb | head -n1; }

# 3. Kernel and modules, extracted member by member (the image is ~70 MB).
rm -rf "$work/image" && mkdir -p "$work/image"
dpkg-deb --fsys-tarfile "$(deb "$image_pkg")" |
    tar -x -C "$work/image" --wildcards "./boot/vmlinuz-$abi" "./lib/modules/$abi/kernel/drivers/*" ||
    die "could not unpack $image_pkg"
cp "$work/image/boot/vmlinuz-$abi" "$out/vmlinuz"
for m in $MDEV_MODULES $VIRTIO_MODULES; do
    found=$(find "$work/image/lib/modules/$abi" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
    [ -n "$found" ] || die "module $m is not in $image_pkg"
    case "$found" in
    *.ko.xz) xz -dc "$found" >"$out/modules/$m.ko" ;;
    *.ko.zst) zstd -dcq "$found" >"$out/modules/$m.ko" ;;
    *) cp "$found" "$out/modules/$m.ko" ;;
    esac
done
rm -rf "$work/image"

# 4. Headers + kbuild, pointed at the unpack dir instead of /usr/src.
rm -rf "$work/hdr" && mkdir -p "$work/hdr"
for p in "$hdr_pkg" "$common_pkg" "$kbuild_pkg"; do
    dpkg -x "$(deb "$p")" "$work/hdr" || die "could not unpack $p"
done
kdir="$work/hdr/usr/src/linux-headers-$abi"
sed -i "s#^include /usr/src/#include $work/hdr/usr/src/#" "$kdir/Makefile"

# 5. mtty.c alone out of the ~140 MB source tarball; never kept outside the cache.
rm -rf "$work/src" && mkdir -p "$work/src" "$work/mtty"
dpkg-deb --fsys-tarfile "$(deb "$source_pkg")" |
    tar -xO "./usr/src/linux-source-$series.tar.xz" | xz -dc |
    tar -x -C "$work/src" --wildcards '*/samples/vfio-mdev/mtty.c' ||
    die "could not extract samples/vfio-mdev/mtty.c from $source_pkg"
mtty_c=$(find "$work/src" -name mtty.c | head -n1)
[ -n "$mtty_c" ] || die "mtty.c missing from $source_pkg"
cp "$mtty_c" "$work/mtty/mtty.c"
echo 'obj-m := mtty.o' >"$work/mtty/Makefile"

# 6. Build mtty.ko with the compiler the kernel was built with, when present.
cc=gcc
kcc=$(sed -n 's/^#define CONFIG_CC_VERSION_TEXT "\(gcc-[0-9]*\).*/\1/p' "$kdir/include/generated/autoconf.h" 2>/dev/null || true)
if [ -n "$kcc" ] && command -v "$kcc" >/dev/null 2>&1; then cc=$kcc; fi
make -s -C "$kdir" M="$work/mtty" CC="$cc" modules >&2 || die "building mtty.ko failed (need make and $cc)"
cp "$work/mtty/mtty.ko" "$out/modules/mtty.ko"
rm -rf "$work/src"

echo "$abi" >"$out/abi"
echo "abi=$abi version=$version" >"$out/stamp"
echo "$out"
