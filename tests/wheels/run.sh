#!/usr/bin/env bash
# Tests each release wheel in dist/ on the system it claims (root only): the aarch64 and x86-64
# wheels each in a Debian 11 bullseye userland of their own architecture (glibc 2.31, CPython 3.9;
# aarch64 runs under qemu-user through binfmt_misc), installed with that system's own python3 into
# a venv; the x86-64 wheel also on this machine's newer glibc and Python. Each runs the smoke suite
# and, in the userlands, the tests of the command line, submission, transport, remote and local
# delivery and doctor. Test deps come from PyPI.
# Userlands are made once with mmdebstrap and kept in $DMA_CHROOT_CACHE (default /var/cache/dma-ci).
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${DMA_CHROOT_CACHE:-/var/cache/dma-ci}
SUITE=bullseye
DEPS=(aiosmtpd trustme dnslib pytest pytest-timeout)
TESTS=(tests/wheels/test_smoke.py tests/test_cli.py tests/test_submit.py tests/test_transport.py
    tests/test_remote_delivery.py tests/test_local.py tests/test_doctor.py)

need() {  # Debian packages this script uses
    local missing=() p
    for p in mmdebstrap qemu-user-static binfmt-support; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    apt-get indextargets 'Label: Debian' | grep -q . || missing+=(apt)  # no lists yet: update
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Foreign binaries run through binfmt_misc; its F flag keeps the interpreter usable in a chroot.
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        { echo "run.sh: qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }
}

userland() {  # $1: Debian architecture. A cached tree, made once: unpacked only, as no
    # maintainer script runs (they would run under emulation): passwd, group and nsswitch.conf by hand.
    local root=$CACHE/$SUITE-$1 mirror
    if [ ! -e "$root/.complete" ]; then
        rm -rf "$root"
        mkdir -p "$CACHE"
        # This machine's Debian mirror, main archive only (mmdebstrap's default security mirror
        # may lack a foreign architecture).
        mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' | head -1)
        [ -n "$mirror" ] || { echo "run.sh: no Debian mirror in apt's lists (apt-get update)" >&2; return 1; }
        mmdebstrap --quiet --variant=extract --arch="$1" \
            --include=dash,base-files,base-passwd,coreutils,login,mount,passwd,util-linux,python3,python3-venv \
            "$SUITE" "$root" "$mirror" </dev/null &&
            cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd" &&
            cp "$root/usr/share/base-passwd/group.master" "$root/etc/group" &&
            printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf" &&
            touch "$root/.complete" || return 1
    fi
    echo "$root"
}

# The test session, as a shell script run inside a userland (or on this machine): in directory $1,
# Python $2 installs wheel $3 into a new venv and runs the tests named after them. Prints what it
# runs on, then pytest's summary.
SESSION='
set -eu
cd "$1"; python=$2 wheel=$3; shift 3
venv=$(mktemp -d) && chmod 755 "$venv" && venv=$venv/venv  # tests run it as nobody too
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "$wheel" '"${DEPS[*]}"'
"$venv/bin/python" -c "import dma._native as n, platform, sys
print(\"on\", platform.machine(), *platform.libc_ver(), \"CPython\", sys.version.split()[0], n.__file__)"
"$venv/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
rm -rf "${venv%/venv}"
'

in_userland() {  # $1: Debian architecture, $2: wheel, then more pytest arguments (called with ||:
    # so no set -e in here)
    local base work rc=0
    base=$(userland "$1") || return 1
    work=$CACHE/run-$1
    rm -rf "$work"
    cp -a "$base" "$work" && mkdir -p "$work/src" "$CACHE/pip" &&
        cp -a tests pyproject.toml "$2" "$work/src/" &&
        cp /etc/ssl/certs/ca-certificates.crt "$work/etc/ssl/certs/" &&
        cp /etc/resolv.conf "$work/etc/resolv.conf" &&
        printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$work/etc/hosts" || return 1
    echo "== $(basename "$2") in Debian $SUITE $1"
    unshare --mount --propagation private -- sh -ec '
        w=$1; shift
        mount -t proc proc "$w/proc"
        mount --rbind /dev "$w/dev"
        mount -t tmpfs tmpfs "$w/tmp"
        mkdir -p "$w/root/.cache/pip" && mount --bind "$0/pip" "$w/root/.cache/pip"
        exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
            chroot "$w" /bin/sh -c "$@"
    ' "$CACHE" "$work" "$SESSION" sh /src python3 "/src/$(basename "$2")" "${TESTS[@]}" "${@:3}" || rc=$?
    rm -rf "$work"
    return $rc
}

sdist_without_cargo() {  # $1: the sdist. pip must fail, saying in one line what is missing.
    local venv out
    venv=$(mktemp -d)
    python3 -m venv "$venv"
    out=$(PATH="$venv/bin" "$venv/bin/pip" install -q "$1" 2>&1) && { echo "$1 built without cargo?" >&2; return 1; }
    rm -rf "$venv"
    grep -x ' *dma-mta: building from source needs Rust .*' <<<"$out" ||
        { echo "$out" >&2; echo "run.sh: no one-line reason from the sdist build without cargo" >&2; return 1; }
}

[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (it makes chroots)" >&2; exit 77; }
shopt -s nullglob
x86=(dist/*manylinux*_x86_64.whl) arm=(dist/*manylinux*_aarch64.whl) sdist=(dist/*.tar.gz)
[ ${#x86[@]} = 1 ] && [ ${#arm[@]} = 1 ] && [ ${#sdist[@]} = 1 ] ||
    { echo "run.sh: run ./dev wheels first" >&2; exit 66; }
need
failed=0
echo "== $(basename "${sdist[0]}") without cargo"
sdist_without_cargo "${sdist[0]}" || failed=1
# The crates compiled for the development build are reused (same profile): only dma is rebuilt.
echo "== $(basename "${sdist[0]}") built by pip with cargo, on this machine"
CARGO_TARGET_DIR=$PWD/target nice sh -c "$SESSION" sh . python3 "${sdist[0]}" tests/wheels/test_smoke.py || failed=1
echo "== $(basename "${x86[0]}") on this machine"
sh -c "$SESSION" sh . python3 "${x86[0]}" tests/wheels/test_smoke.py || failed=1
in_userland amd64 "${x86[0]}" || failed=1
# Under qemu-user a process's peak RSS includes the emulator's own: not dma's to measure.
in_userland arm64 "${arm[0]}" --deselect tests/test_local.py::test_50_mib_message_in_constant_memory || failed=1
exit $failed
