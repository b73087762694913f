#!/bin/sh
# Build the msynth base image from Debian packages alone, for machines that reach a Debian mirror but no container
# registry: debootstrap a minimal Debian with Python 3.11, then import the tree as an image.
#
#   sudo containers/build-base.sh [ROOTFS_DIR] [IMAGE]
#
# ROOTFS_DIR (default /tmp/msynth-rootfs) is created, filled and left for reuse; IMAGE defaults to
# msynth-base:bookworm (podman names it localhost/msynth-base:bookworm). Environment: MIRROR (default
# http://deb.debian.org/debian), SUITE (default bookworm: Python 3.11, the version msynth supports), ENGINE (podman,
# or buildah; docker also works: `docker import`). Then build msynth on it:
#
#   podman build -f containers/Dockerfile --build-arg BASE=localhost/msynth-base:bookworm -t msynth:cpu .
set -eu

ROOTFS=${1:-/tmp/msynth-rootfs}
IMAGE=${2:-msynth-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
ENGINE=${ENGINE:-podman}
PACKAGES=python3.11,python3-venv,python3-pip,libgomp1,ca-certificates

if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"
fi
# Security updates, then drop what an image does not need: apt lists and caches, docs, man pages, locales.
cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# Resolve names inside the chroot with the host's resolver (the image gets its own at run time).
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
chroot "$ROOTFS" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq && apt-get clean'
: > "$ROOTFS/etc/resolv.conf"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*
# Image files owned by root, whatever the user who ran debootstrap; the proc/sys/dev mount points stay empty.
pack() { tar --numeric-owner -C "$ROOTFS" --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c .; }
if [ "$ENGINE" = buildah ]; then
    # buildah has no `import`: unpack the tree into an empty container and commit it.
    pack > "$ROOTFS.tar"
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$ROOTFS.tar" /
    buildah config --cmd /bin/bash --env LANG=C.UTF-8 "$ctr"
    buildah commit --rm "$ctr" "$IMAGE"
    rm -f "$ROOTFS.tar"
else
    pack | "$ENGINE" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE"
fi
echo "built $IMAGE from $SUITE ($MIRROR)"
