#!/usr/bin/env bash
# The packaging, end to end, on this machine, as root (tests/package/install-deps.sh first):
#
# - the Debian package: built by scripts/build-deb.sh, its fields, files, modes, conffiles
#   and maintainer scripts checked, lintian; installed with dpkg -i (the system user, the
#   binary, the configuration accepted by `rpcpin check` as that user, the unit enabled
#   but not started, systemd-analyze verify and its security exposure); removed (the
#   edited conffile and the user stay, the unit is masked); purged (nothing left);
# - the container image, which cannot be built here: hadolint on the Dockerfile, its
#   HEALTHCHECK command run against a stand-in admin listener (and against rpcpin itself
#   with config/docker.toml once the binary has the [admin] listener).
#
# It refuses to run where an rpcpin package, user or /etc/rpcpin already exists, and
# purges what it installed on any exit. Prints "package: N passed, 0 failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
started=$SECONDS

passed=0
ok() {
    passed=$((passed + 1))
    echo "package: ok   $*"
}
fail() {
    echo "package: FAIL $*" >&2
    echo "package: $passed passed, 1 failed" >&2
    exit 1
}

if [[ $EUID -ne 0 ]]; then
    echo "tests/package/check.sh: run as root (it installs and purges the package)" >&2
    exit 1
fi
hadolint=target/package-venv/bin/hadolint
for tool in dpkg-deb dpkg-shlibdeps lintian systemd-analyze adduser readelf python3 runuser "$hadolint"; do
    command -v "$tool" >/dev/null || fail "'$tool' not found: run tests/package/install-deps.sh"
done

# --- this machine must not have rpcpin already: the test would purge it ------------------
status_of() { dpkg-query -W -f='${Status}' rpcpin 2>/dev/null || true; }
[[ "$(status_of)" == "" || "$(status_of)" == "unknown ok not-installed" ]] ||
    fail "the rpcpin package is on this machine ($(status_of)); the test installs and purges it: dpkg --purge rpcpin first"
! getent passwd rpcpin >/dev/null || fail "a user rpcpin exists already; the test creates and removes it"
! getent group rpcpin >/dev/null || fail "a group rpcpin exists already; the test creates and removes it"
[[ ! -e /etc/rpcpin ]] || fail "/etc/rpcpin exists already; the test installs and purges it"

work="$(mktemp -d)"
installed=0
server_pid=
cleanup() {
    local rc=$?
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if ((installed)); then
        if [[ "$(status_of)" != "" && "$(status_of)" != "unknown ok not-installed" ]]; then
            dpkg --purge rpcpin >/dev/null 2>&1 || echo "package: cleanup: dpkg --purge rpcpin failed" >&2
        fi
        # Created by this run (checked absent above) and left by a failed postinst/postrm.
        if getent passwd rpcpin >/dev/null; then userdel rpcpin || true; fi
        if getent group rpcpin >/dev/null; then groupdel rpcpin || true; fi
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

cargo_version="$(awk '
    /^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version[[:space:]]*=/ { gsub(/^version[[:space:]]*=[[:space:]]*"|".*$/, ""); print; exit }
' Cargo.toml)"
deb_version="${cargo_version//-/\~}-1"
arch="$(dpkg --print-architecture)"

# --- build -------------------------------------------------------------------------------
deb="$(scripts/build-deb.sh --out "$work/out")" || fail "scripts/build-deb.sh failed"
[[ "$deb" == "$work/out/rpcpin_${deb_version}_${arch}.deb" && -f "$deb" ]] ||
    fail "scripts/build-deb.sh printed '$deb', expected $work/out/rpcpin_${deb_version}_${arch}.deb"
ok "built $(basename "$deb")"

# --- what is in it -----------------------------------------------------------------------
field() { dpkg-deb --field "$deb" "$1"; }
[[ "$(field Package)" == rpcpin ]] || fail "Package: '$(field Package)'"
[[ "$(field Version)" == "$deb_version" ]] || fail "Version: '$(field Version)', expected $deb_version"
[[ "$(field Architecture)" == "$arch" ]] || fail "Architecture: '$(field Architecture)', expected $arch"
depends="$(field Depends)"
[[ "$depends" =~ (^|, )libc6\ \(\>=\ 2\.[0-9]+\) && "$depends" =~ (^|, )adduser(,|$) ]] ||
    fail "Depends: '$depends' (expected libc6 (>= 2.N) and adduser)"
ok "control: rpcpin $deb_version $arch, Depends: $depends"

# mode, owner and path of every member.
contents="$(dpkg-deb --contents "$deb" | awk '{ print $1, $2, $6 }')"
expected="drwxr-xr-x root/root ./
drwxr-xr-x root/root ./etc/
drwxr-xr-x root/root ./etc/rpcpin/
-rw-r--r-- root/root ./etc/rpcpin/rpcpin.toml
drwxr-xr-x root/root ./lib/
drwxr-xr-x root/root ./lib/systemd/
drwxr-xr-x root/root ./lib/systemd/system/
-rw-r--r-- root/root ./lib/systemd/system/rpcpin.service
drwxr-xr-x root/root ./usr/
drwxr-xr-x root/root ./usr/bin/
-rwxr-xr-x root/root ./usr/bin/rpcpin
drwxr-xr-x root/root ./usr/share/
drwxr-xr-x root/root ./usr/share/doc/
drwxr-xr-x root/root ./usr/share/doc/rpcpin/
-rw-r--r-- root/root ./usr/share/doc/rpcpin/README.md
-rw-r--r-- root/root ./usr/share/doc/rpcpin/changelog.Debian.gz
-rw-r--r-- root/root ./usr/share/doc/rpcpin/copyright"
[[ "$contents" == "$expected" ]] ||
    fail "contents differ from the expected list:$(echo; diff <(echo "$expected") <(echo "$contents") || true)"
ok "contents: $(grep -c '^-' <<<"$contents") files, modes and root ownership as expected"

control_members="$(dpkg-deb --ctrl-tarfile "$deb" | tar -tvf - | awk '{ print $1, $6 }' | sort -k2)"
for script in postinst postrm prerm; do
    grep -qx -- "-rwxr-xr-x ./$script" <<<"$control_members" ||
        fail "DEBIAN/$script missing or not 0755: $control_members"
done
[[ "$(dpkg-deb --info "$deb" conffiles)" == /etc/rpcpin/rpcpin.toml ]] ||
    fail "conffiles: '$(dpkg-deb --info "$deb" conffiles)'"
ok "maintainer scripts 0755; conffiles: /etc/rpcpin/rpcpin.toml"

dpkg-deb --extract "$deb" "$work/tree"
cmp -s "$work/tree/lib/systemd/system/rpcpin.service" packaging/rpcpin.service ||
    fail "the packaged unit differs from packaging/rpcpin.service"
! readelf -S "$work/tree/usr/bin/rpcpin" | grep -q '\.symtab' || fail "/usr/bin/rpcpin is not stripped"
grep -q '^# Edit backend.host first' "$work/tree/etc/rpcpin/rpcpin.toml" ||
    fail "the packaged configuration lacks the header telling to edit backend.host"
sed -n '/^# rpcpin in front of an Exchange/,$p' "$work/tree/etc/rpcpin/rpcpin.toml" |
    head -n "$(wc -l <config/exchange.toml)" | cmp -s - config/exchange.toml || fail "the packaged configuration does not carry config/exchange.toml"
ok "the unit is packaging/rpcpin.service, the binary is stripped, the configuration is config/exchange.toml with a header"

# Tags left out: the maintainer address is a placeholder until the project has one
# (DEBFULLNAME/DEBEMAIL set it), this is not an upload to Debian, and no man page yet.
if ! lint="$(lintian --fail-on error,warning \
    --suppress-tags bogus-mail-host,bogus-mail-host-in-debian-changelog,initial-upload-closes-no-bugs,no-manual-page \
    "$deb" 2>&1)"; then
    fail "lintian:$(echo; grep -v 'running with root privileges' <<<"$lint")"
fi
ok "lintian: no error or warning"

# --- install -----------------------------------------------------------------------------
installed=1
dpkg -i "$deb" >"$work/dpkg-i.log" 2>&1 || fail "dpkg -i:$(echo; cat "$work/dpkg-i.log")"
[[ "$(status_of)" == "install ok installed" ]] || fail "after dpkg -i the status is '$(status_of)'"
ok "dpkg -i"

IFS=: read -r _ _ uid gid _ home shell < <(getent passwd rpcpin) || fail "no user rpcpin after install"
((uid > 0 && uid < 1000)) || fail "user rpcpin has uid $uid, not a system uid"
[[ "$(getent group rpcpin | cut -d: -f3)" == "$gid" ]] || fail "user rpcpin's primary group is not rpcpin"
[[ "$shell" == /usr/sbin/nologin && ! -e "$home" ]] ||
    fail "user rpcpin: shell '$shell', home '$home' (expected /usr/sbin/nologin and no home)"
ok "system user rpcpin (uid $uid) with group rpcpin, no login, no home"

[[ "$(/usr/bin/rpcpin --version)" == "rpcpin $cargo_version" ]] ||
    fail "/usr/bin/rpcpin --version says '$(/usr/bin/rpcpin --version)'"
out="$(runuser -u rpcpin -- /usr/bin/rpcpin check --config /etc/rpcpin/rpcpin.toml 2>&1)" ||
    fail "rpcpin check --config /etc/rpcpin/rpcpin.toml, as user rpcpin:$(echo; echo "$out")"
grep -q ': valid$' <<<"$out" || fail "rpcpin check printed no 'valid':$(echo; echo "$out")"
[[ "$(dpkg-query -W -f='${Conffiles}' rpcpin | awk 'NF { print $1 }')" == /etc/rpcpin/rpcpin.toml ]] ||
    fail "dpkg does not list /etc/rpcpin/rpcpin.toml as a conffile"
ok "rpcpin --version; rpcpin check accepts /etc/rpcpin/rpcpin.toml as user rpcpin"

wants=/etc/systemd/system/multi-user.target.wants/rpcpin.service
[[ "$(readlink "$wants")" == /lib/systemd/system/rpcpin.service ]] ||
    fail "the unit is not enabled ($wants)"
ok "the unit is enabled ($wants)"

# verify only warns (exit 0) on unknown keys and the like: any line naming the unit fails.
verify="$(systemd-analyze verify /lib/systemd/system/rpcpin.service 2>&1)" ||
    fail "systemd-analyze verify:$(echo; echo "$verify")"
! grep -q 'rpcpin' <<<"$verify" || fail "systemd-analyze verify:$(echo; echo "$verify")"
ok "systemd-analyze verify /lib/systemd/system/rpcpin.service"

# Exposure on systemd's 0-10 scale (the threshold is in tenths): at most 2.0, i.e. "OK".
security="$(systemd-analyze security --offline=true --threshold=20 /lib/systemd/system/rpcpin.service 2>&1)" ||
    fail "systemd-analyze security: exposure above 2.0:$(echo; grep -E '✗|Overall' <<<"$security")"
ok "systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$security")"

# --- remove: the edited conffile and the user stay -------------------------------------------
echo "# edited by tests/package/check.sh" >>/etc/rpcpin/rpcpin.toml
dpkg -r rpcpin >"$work/dpkg-r.log" 2>&1 || fail "dpkg -r:$(echo; cat "$work/dpkg-r.log")"
[[ "$(status_of)" == "deinstall ok config-files" ]] || fail "after dpkg -r the status is '$(status_of)'"
[[ ! -e /usr/bin/rpcpin && ! -e /lib/systemd/system/rpcpin.service ]] ||
    fail "dpkg -r left the binary or the unit"
grep -q '^# edited by tests/package/check.sh$' /etc/rpcpin/rpcpin.toml ||
    fail "dpkg -r did not keep the edited /etc/rpcpin/rpcpin.toml"
getent passwd rpcpin >/dev/null || fail "dpkg -r removed the user rpcpin (only purge should)"
[[ "$(readlink /etc/systemd/system/rpcpin.service)" == /dev/null ]] ||
    fail "dpkg -r did not mask the unit"
ok "dpkg -r: binary and unit gone, edited conffile and user kept, unit masked"

# --- purge: nothing left ----------------------------------------------------------------
dpkg --purge rpcpin >"$work/dpkg-purge.log" 2>&1 || fail "dpkg --purge:$(echo; cat "$work/dpkg-purge.log")"
case "$(status_of)" in "" | "unknown ok not-installed") ;; *) fail "after purge the status is '$(status_of)'" ;; esac
leftovers=()
for path in /etc/rpcpin /etc/systemd/system/rpcpin.service "$wants" \
    /var/lib/systemd/deb-systemd-helper-enabled/rpcpin.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/rpcpin.service \
    /var/lib/systemd/deb-systemd-helper-masked/rpcpin.service; do
    if [[ -e "$path" || -L "$path" ]]; then leftovers+=("$path"); fi
done
((${#leftovers[@]} == 0)) || fail "dpkg --purge left ${leftovers[*]}"
! getent passwd rpcpin >/dev/null || fail "dpkg --purge left the user rpcpin"
! getent group rpcpin >/dev/null || fail "dpkg --purge left the group rpcpin"
installed=0
ok "dpkg --purge: configuration, unit state, user and group gone"

# --- the container image ----------------------------------------------------------------
if ! lint="$("$hadolint" --no-color --failure-threshold style Dockerfile 2>&1)"; then
    fail "hadolint Dockerfile:$(echo; echo "$lint")"
fi
ok "hadolint Dockerfile"

# The HEALTHCHECK's argv, as Docker reads it (continuation lines joined, then JSON).
mapfile -d '' health < <(python3 - <<'EOF'
import json, re, sys
text = open("Dockerfile").read().replace("\\\n", " ")
m = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
if not m:
    sys.exit("no HEALTHCHECK ... CMD [...] in the Dockerfile")
sys.stdout.write("\0".join(json.loads(m.group(1))) + "\0")
EOF
)
[[ ${#health[@]} -eq 3 && "${health[0]}" == bash && "${health[1]}" == -c ]] ||
    fail "HEALTHCHECK is not [\"bash\", \"-c\", ...]: ${health[*]}"
port="$(grep -o '/dev/tcp/127\.0\.0\.1/[0-9]*' <<<"${health[2]}" | cut -d/ -f5)"
admin="$(awk '/^\[admin\]/ { a = 1; next } /^\[/ { a = 0 } a && /^listen/ { print }' config/docker.toml)"
[[ -n "$port" && "$admin" == "listen = \"0.0.0.0:$port\"" ]] ||
    fail "HEALTHCHECK port '$port' is not config/docker.toml's [admin] listen ('$admin')"
grep -Eq "^EXPOSE( [0-9]+)* $port( |$)" Dockerfile || fail "the Dockerfile does not EXPOSE $port"
ok "HEALTHCHECK, EXPOSE and config/docker.toml agree on the admin port $port"

# Run it against a listener on a free port instead of $port (the rest of the command as is).
# The test's ports lie below the kernel's ephemeral range (32768-60999 by default): a port
# in it may be held, or left in TIME_WAIT, by any client connection of an earlier test, and
# then the listener cannot bind it.
test_port=29135
health_here="${health[2]//\/dev\/tcp\/127.0.0.1\/$port//dev/tcp/127.0.0.1/$test_port}"
[[ "$health_here" == *"/dev/tcp/127.0.0.1/$test_port "* ]] || fail "cannot move the HEALTHCHECK to port $test_port"
healthcheck() { timeout 10 bash -c "$health_here"; }
# wait_listening LOG: the server started last listens on $test_port within 5 s; LOG (its
# output) is shown when it does not, or when it exited.
wait_listening() {
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$test_port") 2>/dev/null; then return 0; fi
        kill -0 "$server_pid" 2>/dev/null ||
            fail "the server on 127.0.0.1:$test_port exited:$(echo; cat "$1")"
        sleep 0.1
    done
    fail "nothing listens on 127.0.0.1:$test_port:$(echo; cat "$1")"
}
stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

binary=target/release/rpcpin
if out="$("$binary" check --config config/docker.toml 2>&1)"; then
    # rpcpin itself, with the image's configuration on loopback ports.
    sed -e 's/^listen = "0\.0\.0\.0:135"/listen = "127.0.0.1:29136"/' \
        -e 's/^listen = "0\.0\.0\.0:6004"/listen = "127.0.0.1:29137"/' \
        -e 's/^listen = "0\.0\.0\.0:6001"/listen = "127.0.0.1:29138"/' \
        -e "s/^listen = \"0\\.0\\.0\\.0:$port\"/listen = \"127.0.0.1:$test_port\"/" \
        config/docker.toml >"$work/docker.toml"
    "$binary" run --config "$work/docker.toml" >"$work/rpcpin.log" 2>&1 &
    server_pid=$!
    wait_listening "$work/rpcpin.log"
    healthcheck || fail "the HEALTHCHECK failed against rpcpin's admin listener:$(echo; cat "$work/rpcpin.log")"
    stop_server
    ! healthcheck 2>/dev/null || fail "the HEALTHCHECK passed with rpcpin stopped"
    ok "HEALTHCHECK: healthy against rpcpin with config/docker.toml, unhealthy once it stopped"
elif grep -qF "unknown field \`admin\`" <<<"$out"; then
    echo "package: skip rpcpin check config/docker.toml: this binary has no [admin] listener yet"
    # A stand-in admin listener: 200 on /healthz, then 404, then nothing.
    mkdir "$work/www"
    echo ok >"$work/www/healthz"
    python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$test_port" >"$work/http.log" 2>&1 &
    server_pid=$!
    wait_listening "$work/http.log"
    healthcheck || fail "the HEALTHCHECK failed against a listener answering 200 on /healthz"
    rm "$work/www/healthz"
    ! healthcheck || fail "the HEALTHCHECK passed on a 404"
    stop_server
    ! healthcheck 2>/dev/null || fail "the HEALTHCHECK passed with nothing listening"
    ok "HEALTHCHECK: healthy on 200, unhealthy on 404 and on a closed port (stand-in listener)"
else
    fail "rpcpin check --config config/docker.toml:$(echo; echo "$out")"
fi

echo "package: $passed passed, 0 failed ($((SECONDS - started)) s)"
