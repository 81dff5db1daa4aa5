#!/usr/bin/env bash
# Builds the Debian package of rpcpin, target/debian/rpcpin_<version>-1_<arch>.deb, with
# nothing but dpkg-dev and binutils (no cargo-deb or debhelper to install): it lays out the
# tree, writes DEBIAN/ by hand and calls `dpkg-deb --build --root-owner-group`.
#
#   /usr/bin/rpcpin                      target/release/rpcpin, stripped
#   /lib/systemd/system/rpcpin.service   packaging/rpcpin.service
#   /etc/rpcpin/rpcpin.toml              config/exchange.toml with a header (a conffile)
#   /usr/share/doc/rpcpin/               README.md, copyright, changelog.Debian.gz
#   DEBIAN/postinst, prerm, postrm       packaging/debian/: the system user, the unit
#                                        enabled but not started, purge
#
# Usage: scripts/build-deb.sh [--out DIR] [--binary PATH]
#   --out DIR       where the .deb goes (default target/debian); its path is printed last
#   --binary PATH   package this binary instead of building target/release/rpcpin
#                   (its --version must match Cargo.toml)
# Environment: DEBFULLNAME and DEBEMAIL name the maintainer; SOURCE_DATE_EPOCH fixes
# the timestamps (default: the last commit's time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    echo "build-deb: $*" >&2
    exit 1
}

out=target/debian
binary=
while (($#)); do
    case "$1" in
        -o | --out)
            (($# >= 2)) || die "$1 needs a directory"
            out="$2"
            shift 2
            ;;
        --binary)
            (($# >= 2)) || die "$1 needs a path"
            binary="$2"
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

for tool in dpkg dpkg-deb dpkg-shlibdeps strip gzip md5sum; do
    command -v "$tool" >/dev/null || die "'$tool' not found: apt-get install dpkg-dev binutils"
done

# --- version and architecture ----------------------------------------------------------
# The [package] table's version; a SemVer pre-release (1.0.0-rc.1) sorts before the
# release in Debian only with '~' (1.0.0~rc.1).
cargo_version="$(awk '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version[[:space:]]*=/ { gsub(/^version[[:space:]]*=[[:space:]]*"|".*$/, ""); print; exit }
' Cargo.toml)"
[[ -n "$cargo_version" ]] || die "no version in Cargo.toml's [package] table"
deb_version="${cargo_version//-/\~}-1"
arch="$(dpkg --print-architecture)"

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

maintainer="${DEBFULLNAME:-rpcpin maintainers} <${DEBEMAIL:-rpcpin@localhost}>"

# --- the binary --------------------------------------------------------------------------
if [[ -z "$binary" ]]; then
    binary=target/release/rpcpin
    if command -v cargo >/dev/null; then
        # A no-op when target/release/rpcpin is up to date; never packages a stale one.
        cargo build --release --locked
    elif [[ ! -x "$binary" ]]; then
        die "$binary is missing and cargo is not installed to build it"
    fi
fi
[[ -x "$binary" ]] || die "$binary: not an executable file"
binary_version="$("$binary" --version)" || die "$binary --version failed"
[[ "$binary_version" == "rpcpin $cargo_version" ]] ||
    die "$binary says '$binary_version', Cargo.toml says $cargo_version"

# --- the tree ----------------------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 022
# dpkg-shlibdeps wants debian/control beside the package's tree in debian/<package>.
root="$work/debian/rpcpin"
doc="$root/usr/share/doc/rpcpin"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/rpcpin" "$doc"

strip --remove-section=.comment --remove-section=.note -o "$root/usr/bin/rpcpin" "$binary"
chmod 0755 "$root/usr/bin/rpcpin"
install -m 0644 packaging/rpcpin.service "$root/lib/systemd/system/rpcpin.service"
install -m 0644 README.md "$doc/README.md"
install -m 0644 packaging/copyright "$doc/copyright"

{
    cat <<'EOF'
# /etc/rpcpin/rpcpin.toml: rpcpin's configuration, the Exchange example.
#
# Edit backend.host first: the RPC server (here the Exchange server) as rpcpin reaches
# it. Then check the file and start the service:
#   rpcpin check --config /etc/rpcpin/rpcpin.toml
#   systemctl enable --now rpcpin
# After a change: systemctl reload rpcpin. Every key: /usr/share/doc/rpcpin/README.md.
#
# The systemd unit runs rpcpin as the user rpcpin with CAP_NET_BIND_SERVICE only: leave
# process.user unset.

EOF
    cat config/exchange.toml
    cat <<'EOF'

# Health, readiness and Prometheus metrics (GET /healthz, /readyz, /metrics); off
# unless set. Keep it off the public side.
# [admin]
# listen = "127.0.0.1:9135"

# SIGTERM lets established connections finish for drain_timeout (default 30 s); keep it
# below the unit's TimeoutStopSec (45 s) or raise that too (systemctl edit rpcpin).
# [limits]
# drain_timeout = "30s"
EOF
} >"$root/etc/rpcpin/rpcpin.toml"
chmod 0644 "$root/etc/rpcpin/rpcpin.toml"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
    printf 'rpcpin (%s) unstable; urgency=medium\n\n' "$deb_version"
    printf '  * Built from rpcpin %s (commit %s) by scripts/build-deb.sh.\n\n' \
        "$cargo_version" "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"

# --- DEBIAN/ -----------------------------------------------------------------------------
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/rpcpin/rpcpin.toml >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

# Depends: the shared libraries' minimum versions from the symbols the binary uses
# (libc6, libgcc-s1 for unwinding), as dh_shlibdeps would; adduser for postinst.
printf 'Source: rpcpin\n\nPackage: rpcpin\nArchitecture: any\n' >"$work/debian/control"
shlibs="$(cd "$work" && dpkg-shlibdeps -O debian/rpcpin/usr/bin/rpcpin)" ||
    die "dpkg-shlibdeps failed"
shlibs="${shlibs#shlibs:Depends=}"
[[ "$shlibs" == *libc6* ]] || die "dpkg-shlibdeps found no libc6 dependency: '$shlibs'"

installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: rpcpin
Version: $deb_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $shlibs, adduser
Section: net
Priority: optional
Description: endpoint-mapper-aware MS-RPC proxy for the DMZ
 rpcpin listens on TCP 135 and on a few fixed ("pinned") ports in front of an
 MS-RPC server (Exchange for Outlook's MAPI/RPC, a domain controller, any
 Windows RPC service). It relays the server's endpoint mapper and rewrites the
 dynamic ports in its answers to the pinned ones, so that a firewall opens
 three ports instead of the whole dynamic range.
 .
 The package installs a hardened systemd unit, enabled but not started:
 edit /etc/rpcpin/rpcpin.toml first.
EOF
chmod 0644 "$root/DEBIAN/control"

# md5sums of everything but DEBIAN/ and etc/, which holds only conffiles (dpkg tracks
# those itself).
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/rpcpin_${deb_version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "build-deb: built $deb ($(du -h "$deb" | cut -f1), Depends: $shlibs, adduser)" >&2
echo "$deb"
