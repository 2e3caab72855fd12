#!/usr/bin/env bash
# Installs the Debian packages one job needs, and nothing it does not. Idempotent: packages already
# installed are skipped without touching apt. Usage:
#   scripts/install-deps.sh build   what `cargo build --workspace` needs beyond the Rust toolchain:
#                                   nothing (libvirt is loaded at run time, not linked; FUSE is
#                                   spoken without libfuse)
#   scripts/install-deps.sh demo    build + fuse3 (fusermount3 for the simulated host)
#   scripts/install-deps.sh test    demo + what the tests drive for real: libvirtd, QEMU, mdevctl,
#                                   busybox for guest images, systemd-analyze; and the
#                                   libvirt-qemu user libvirtd started by hand needs
# Needs root (apt-get). Prints what it installs; exits non-zero, naming the packages, if apt fails.
set -euo pipefail

job="${1:-}"
build=()
demo=("${build[@]}" fuse3)
test=("${demo[@]}"
    mdevctl                 # Debian's mdevctl, run against the simulated sysfs
    uuid-runtime            # uuidgen, as an operator would use it
    qemu-system-x86         # real guests under TCG (conformance suite, guest agent)
    busybox-static cpio     # guest initramfs
    libvirt0                # libvirt's client library, which gvm-libvirt loads at run time
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libxml2-utils
    systemd                 # systemd-analyze verify/security on the shipped unit
)
case "$job" in
    build) want=("${build[@]}") ;;
    demo) want=("${demo[@]}") ;;
    test) want=("${test[@]}") ;;
    *) echo "usage: $0 build|demo|test" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing ${missing[*]}; run as root, or: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A private archive cache: the image's apt clean-up hook can delete downloads mid-install.
    apt_opts=(-o DPkg::Lock::Timeout=600 -o Dir::Cache::archives=/tmp/apt-cache/)
    mkdir -p /tmp/apt-cache/partial
    apt-get update -q >/dev/null || echo "install-deps: apt-get update failed; trying the lists there are" >&2
    apt-get "${apt_opts[@]}" -f install -y -q >/dev/null || true
    apt-get "${apt_opts[@]}" install -y -q "${missing[@]}" >/dev/null \
        || { echo "install-deps: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

if [ "$job" = test ]; then
    # libvirtd started by hand (no systemd here) needs its log dir and a QEMU user in the kvm group
    # (without the group it re-probes QEMU on every call: ~30 s per `virsh define`). The libvirt
    # tests start virtlogd and libvirtd themselves.
    mkdir -p /var/log/libvirt
    getent group kvm >/dev/null || groupadd --system kvm
    if ! id libvirt-qemu >/dev/null 2>&1; then
        useradd --system --user-group --groups kvm --no-create-home --shell /usr/sbin/nologin libvirt-qemu
    else
        usermod -a -G kvm libvirt-qemu
    fi
fi
