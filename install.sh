#!/usr/bin/env bash
# Install cmdop (one file, cmdop.pyz) on a Linux server.
#
#   curl -fsSL URL/install.sh | bash -s -- --from URL/cmdop.pyz [--prefix DIR] [--service]
#   bash install.sh --from dist/cmdop.pyz --prefix ~/.local/bin
#
# Promises:
# - The file is checked against its SHA256 (SHA256SUMS beside it, or --sha256 HEX) before
#   anything is installed; a mismatch installs nothing and exits 1.
# - A file that is not a zipapp (#! line + zip archive with __main__.py) is refused as such.
# - A local pyz or SHA256SUMS owned by a third user (not root, not you, not whoever ran sudo),
#   writable by everyone, or in a directory such a user could change, is refused (no --sha256).
# - Over plain http:// (not from this machine) only --sha256 counts: a SHA256SUMS from the same
#   host proves nothing against whoever can change the download.
# - A pyz built for another architecture (`cmdop-arch=` on its second line) is refused.
# - No interpreter found through a relative PATH entry, or in a file or directory that another
#   user owns or everyone can write, is ever run (not even to ask its version); one that is not
#   CPython is passed over.
# - A pyz for several CPythons (#! python3; its second line `# cmdop-pythons=3.10,...` names
#   them) runs on the host's python3 when that is one of them, else on the newest pythonX.Y on
#   PATH that is (RHEL 9: python3 is 3.9, python3.11/3.12 come from AppStream); the installed
#   copy's #! line then names that one. None there: it names the versions the file supports,
#   what was found, and the package to install, and exits 1.
# - A single-version pyz: the Python its #! line names (python3.X) must exist; if not, it says
#   which package to install for this distribution (a PPA only where the release does not ship
#   that Python) and exits 1.
# - The zipapp is run once (--version, private cache) before it replaces anything.
# - sudo is used only when the prefix is not writable by the current user.
# - The binary is written beside its final name and renamed into place: never half-written.
# - Idempotent: installing the same file again changes nothing.
# - --service installs and starts the systemd unit through `cmdop service install`.
#
# Exit status: 0 installed (or already current) · 1 failed, nothing changed · 2 usage.
set -euo pipefail

PROG=install.sh
PREFIX=/usr/local/bin
FROM="${CMDOP_INSTALL_FROM:-}"
SHA256=""
SERVICE=""
NAME=cmdop

say() { printf '%s\n' "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$1" >&2; [ $# -lt 2 ] || printf 'hint: %s\n' "$2" >&2; exit 1; }
usage() {
  cat <<EOF
usage: $PROG --from FILE|URL [--sha256 HEX] [--prefix DIR] [--name NAME] [--service[=system|user]]

  --from FILE|URL   the cmdop.pyz to install (SHA256SUMS must sit beside it unless --sha256)
  --sha256 HEX      expected sha256 of the file (instead of SHA256SUMS)
  --prefix DIR      directory to install into (default /usr/local/bin)
  --name NAME       installed file name (default cmdop)
  --service         also install and start the systemd unit (system scope; =user for a user unit)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --from) [ $# -ge 2 ] || { usage >&2; exit 2; }; FROM="$2"; shift 2 ;;
    --from=*) FROM="${1#*=}"; shift ;;
    --sha256) [ $# -ge 2 ] || { usage >&2; exit 2; }; SHA256="$2"; shift 2 ;;
    --sha256=*) SHA256="${1#*=}"; shift ;;
    --name) [ $# -ge 2 ] || { usage >&2; exit 2; }; NAME="$2"; shift 2 ;;
    --name=*) NAME="${1#*=}"; shift ;;
    --service) SERVICE=system; shift ;;
    --service=system|--service=user) SERVICE="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) printf '%s: error: unknown argument %s\n' "$PROG" "$1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$FROM" ] || { usage >&2; printf '%s: error: --from FILE|URL is required\n' "$PROG" >&2; exit 2; }
case "$NAME" in */*|"") die "--name must be a plain file name" ;; esac
PREFIX="${PREFIX/#\~/$HOME}"
case "$PREFIX" in /*) ;; *) PREFIX="$PWD/$PREFIX" ;; esac
if [ -n "$SHA256" ]; then
  SHA256="$(printf '%s' "$SHA256" | tr 'A-F' 'a-f')"
  [[ "$SHA256" =~ ^[0-9a-f]{64}$ ]] || die "--sha256 must be 64 hex digits"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/cmdop-install.XXXXXX")"
STAGED=""
cleanup() {
  rm -rf "$TMP"
  if [ -n "$STAGED" ]; then $SUDO rm -f "$STAGED" 2>/dev/null || true; fi
}
SUDO=""
trap cleanup EXIT

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else die "neither sha256sum nor shasum found" "install coreutils"; fi
}

# A local pyz or SHA256SUMS that a third user owns, or could replace, is not taken on trust: its
# checksum would be theirs as well. Owners taken: root, this user and the user who ran sudo
# (who copied the files over). A sticky directory such as /tmp may hold them.
foreign_file() {  # foreign_file FILE: prints why, or nothing
  local f="$1" x owner mode kind
  for x in "$f" "$(dirname -- "$f")"; do
    read -r owner mode kind < <(stat -L -c '%u %a %F' -- "$x" 2>/dev/null || echo "? ? ?")
    if [ "$owner" = "?" ]; then echo "$x cannot be checked (stat failed)"; return; fi
    case " 0 $(id -u) ${SUDO_UID:-} " in
      *" $owner "*) ;;
      *) echo "$x belongs to uid $owner"; return ;;
    esac
    if (( (8#$mode & 8#0002) != 0 )) && { [ "$x" = "$f" ] || (( (8#$mode & 8#1000) == 0 )); }; then
      echo "$x is writable by every user"; return
    fi
  done
}
trusted_file() {  # trusted_file FILE: dies when another user could have chosen its bytes
  local why
  why="$(foreign_file "$1")"
  [ -z "$why" ] || die "refusing to install from $1: $why" \
    "copy the files into a directory only you (or root) can write, or pass --sha256 HEX from a source you trust"
}

fetch() {  # fetch URL DEST
  local redir=()  # an https download is not redirected to plain http
  case "$1" in https://*) redir=(--proto-redir =https) ;; esac
  if command -v curl >/dev/null 2>&1; then curl -fsSL ${redir[@]+"${redir[@]}"} --retry 3 -o "$2" "$1" </dev/null
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1" </dev/null
  else die "neither curl nor wget found" "install curl (apt-get install curl)"; fi
}

# 1. Get the file and its expected checksum.
PYZ="$TMP/cmdop.pyz"
case "$FROM" in
  http://*|https://*)
    # SHA256SUMS from the same host proves nothing when anyone on the path can change both:
    # plain http needs --sha256 (taken from somewhere trusted), except from this machine.
    case "$FROM" in
      http://127.0.0.1[:/]*|http://localhost[:/]*|http://\[::1\][:/]*|https://*) ;;
      *) [ -n "$SHA256" ] || die "refusing to trust a SHA256SUMS fetched over plain http ($FROM): anyone on the path could change both files" \
           "use an https:// URL, or pass --sha256 HEX taken from a page you trust" ;;
    esac
    base="${FROM##*/}"
    fetch "$FROM" "$PYZ" || die "could not download $FROM"
    if [ -z "$SHA256" ]; then
      fetch "${FROM%/*}/SHA256SUMS" "$TMP/SHA256SUMS" \
        || die "could not download ${FROM%/*}/SHA256SUMS" "pass --sha256 HEX instead"
    fi ;;
  *)
    [ -f "$FROM" ] || die "no such file: $FROM"
    base="$(basename "$FROM")"
    [ -n "$SHA256" ] || trusted_file "$FROM"
    cp "$FROM" "$PYZ"
    if [ -z "$SHA256" ]; then
      sums="$(dirname "$FROM")/SHA256SUMS"
      [ -f "$sums" ] || die "no SHA256SUMS beside $FROM" "pass --sha256 HEX, or keep SHA256SUMS next to the file"
      trusted_file "$sums"
      cp "$sums" "$TMP/SHA256SUMS"
    fi ;;
esac
if [ -z "$SHA256" ]; then
  SHA256="$(awk -v f="$base" '{n=$2; sub(/^\*/, "", n)} n==f {print tolower($1); exit}' "$TMP/SHA256SUMS")"
  [ -n "$SHA256" ] || die "SHA256SUMS has no line for $base"
fi

# 2. Verify it before anything else happens.
actual="$(sha256_of "$PYZ")"
if [ "$actual" != "$SHA256" ]; then
  die "checksum mismatch for $base: expected $SHA256, got $actual; nothing was installed" \
      "download it again; if it still differs, the file or its SHA256SUMS was tampered with"
fi
say "verified $base (sha256 $actual)"

# 2b. It must be a zipapp: a #! line, then a zip archive with __main__.py. Anything else (an
#     HTML error page, a script, a truncated download) would be handed to Python as source.
first="$(head -c 2 "$PYZ" 2>/dev/null | LC_ALL=C tr -d '\0' || true)"
if [ "$first" != "#!" ] || ! LC_ALL=C grep -qa "$(printf 'PK\005\006')" "$PYZ" \
   || ! LC_ALL=C grep -qa '__main__\.py' "$PYZ"; then
  what="$(head -c 200 "$PYZ" | head -n 1 | tr -d '\n' | LC_ALL=C tr -c '[:print:]' '?' | cut -c1-60)"
  die "$base is not a cmdop zipapp (no #! line and zip archive with __main__.py); it starts with: ${what:-(empty file)}" \
      "--from must name the cmdop.pyz built by build_zipapp.py (dist/cmdop.pyz), not a page, script or partial download"
fi

# 3. The interpreter it needs. A multi-version build says which CPythons it carries in its zip
#    comment (the last bytes of the file); a single-version one names python3.X on its #! line
#    (compiled dependencies are built for exactly that CPython minor version).
shebang="$(head -c 128 "$PYZ" | head -n 1)"
need="$(printf '%s' "$shebang" | grep -o 'python3\.[0-9][0-9]*' | head -n 1 || true)"
[ -n "$need" ] || need=python3
want="${need#python}"
# (The second line, `# cmdop-pythons=3.10,...`; builds before it said so in the zip comment.)
line2="$(head -c 256 "$PYZ" | sed -n '2{/^# cmdop-pythons=[0-9.,]*\( cmdop-arch=[a-z0-9_]*\)\{0,1\}$/p;}')"
carried="$({ printf '%s\n' "$line2"; tail -c 200 "$PYZ"; } \
  | LC_ALL=C grep -ao 'cmdop-pythons=[0-9.,]*' | head -n 1 | cut -d= -f2 | tr ',' ' ' || true)"
# The architecture its native modules are for: another one would pass `--version` (which loads
# none of them) and then fail at every command, the agent's start included.
built_arch="$(printf '%s\n' "$line2" | LC_ALL=C grep -o 'cmdop-arch=[a-z0-9_]*' | cut -d= -f2 || true)"
host_arch="$(uname -m 2>/dev/null || echo unknown)"
if [ -n "$built_arch" ] && [ "$built_arch" != "$host_arch" ]; then
  case "$host_arch" in x86_64) right=cmdop.pyz ;; *) right="cmdop-$host_arch.pyz" ;; esac
  die "$base is built for $built_arch; this machine is $host_arch" \
      "install $right (build_zipapp.py --platform manylinux2014_$host_arch) instead"
fi
# CPython versions each release ships in its own archive (apt-get install python3.X, no PPA).
distro_pythons() {  # distro_pythons ID VERSION_ID
  case "$1:$2" in
    ubuntu:20.04) echo "3.8 3.9" ;;
    ubuntu:22.04) echo "3.10 3.11" ;;
    ubuntu:24.04|ubuntu:24.10) echo "3.12" ;;
    ubuntu:25.04|ubuntu:25.10) echo "3.13" ;;
    debian:11) echo "3.9" ;;
    debian:12) echo "3.11" ;;
    debian:13) echo "3.13" ;;
    rhel:9*|rocky:9*|almalinux:9*|centos:9*) echo "3.9 3.11 3.12" ;;  # 3.11/3.12: AppStream
    *) echo "" ;;
  esac
}
# X.Y of a CPython; another implementation (PyPy, ...) prints its name: its X.Y cannot load
# CPython's native modules, and `--version` (which loads none) would not notice.
minor_of() {
  "$1" -c 'import sys; i = getattr(sys, "implementation", None)
print("%d.%d" % sys.version_info[:2] if i is None or i.name == "cpython" else i.name)' \
    </dev/null 2>/dev/null || true
}
# An interpreter another user could have put on PATH (or could replace) is never run - install.sh
# usually runs as root: not from a relative PATH entry (".", an empty one, "bin"), nor through a
# file or directory that belongs to another user or that others can write.
unsafe_python() {  # unsafe_python PATH: prints why, or nothing
  local p="$1" real d owner mode kind me
  case "$p" in /*) ;; *) echo "it comes from a relative PATH entry (the current directory)"; return ;; esac
  real="$(readlink -f -- "$p" 2>/dev/null || printf '%s' "$p")"
  me="$(id -u)"
  for d in "$(dirname -- "$p")" "$p" "$(dirname -- "$real")" "$real"; do
    # (stat -c does not follow a symlink: its own mode is always 777 and means nothing)
    read -r owner mode kind < <(stat -c '%u %a %F' -- "$d" 2>/dev/null || echo "? ? ?")
    if [ "$owner" = "?" ]; then echo "$d cannot be checked (stat failed)"; return; fi
    if [ "$owner" != 0 ] && [ "$owner" != "$me" ]; then echo "$d belongs to uid $owner"; return; fi
    if [ "$kind" != "symbolic link" ] && (( (8#$mode & 8#0002) != 0 )); then
      echo "$d is writable by every user"; return
    fi
  done
}
check_python() {  # check_python PATH: dies when PATH is an interpreter install.sh must not run
  local why
  why="$(unsafe_python "$1")"
  [ -z "$why" ] || die "refusing to run $1: $why" \
    "take that directory out of PATH (or make it writable by its owner only) and run install.sh again"
}
# The install line for a multi-version pyz: the newest carried CPython this release ships.
multi_hint() {
  local id="" like="" ver="" ships="" v pick="" newest=""
  local osr="${CMDOP_INSTALL_OS_RELEASE:-/etc/os-release}"
  if [ -r "$osr" ]; then
    id="$(. "$osr"; echo "${ID:-}")"; like="$(. "$osr"; echo "${ID_LIKE:-}")"
    ver="$(. "$osr"; echo "${VERSION_ID:-}")"
  fi
  ships="$(distro_pythons "$id" "$ver")"
  for v in $carried; do
    newest="$v"
    if printf ' %s ' $ships | grep -q " $v "; then pick="$v"; fi
  done
  case " $id $like " in
    *" debian "*|*" ubuntu "*)
      if [ -n "$pick" ]; then echo "sudo apt-get install -y python$pick"
      elif [ "$id" = ubuntu ]; then echo "sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install -y python$newest   (Ubuntu $ver ships Python ${ships:-?})"
      else echo "install CPython $newest (pyenv install $newest)"; fi ;;
    *" fedora "*|*" rhel "*|*" centos "*) echo "sudo dnf install -y python${pick:-$newest}" ;;
    *" suse "*|*" opensuse "*) echo "sudo zypper install -y python${newest//./}" ;;
    *) echo "install one of CPython ${carried// /, } so that 'python3' or 'python3.X' is on PATH (or: pyenv install $newest)" ;;
  esac
}
PY=""
if [ "$need" = python3 ] && [ -n "$carried" ]; then
  # The host's python3 first (the #! line finds it), then the newest carried pythonX.Y on PATH.
  chosen=""; found=""
  for cand in python3 $(printf '%s\n' $carried | sort -t. -k2,2nr | sed 's/^/python/'); do
    p="$(command -v "$cand" 2>/dev/null || true)"
    [ -n "$p" ] || continue
    check_python "$p"
    v="$(minor_of "$p")"
    found="${found:+$found, }$cand ${v:-?} at $p"
    if [ -n "$v" ] && printf ' %s ' $carried | grep -q " $v "; then PY="$p"; chosen="$cand"; break; fi
  done
  if [ -z "$PY" ]; then
    die "$base runs on CPython ${carried// /, }; found: ${found:-no python3 on PATH}" "$(multi_hint)"
  fi
  if [ "$chosen" != python3 ]; then
    # The host's python3 is not one it runs on: the installed copy's #! names the one that is.
    # (A zipapp may carry any prefix before its archive: only the first line changes.)
    { printf '#!/usr/bin/env %s\n' "$chosen"; tail -n +2 "$PYZ"; } > "$TMP/cmdop.rewritten"
    mv -f "$TMP/cmdop.rewritten" "$PYZ"
    actual="$(sha256_of "$PYZ")"
    say "this machine's python3 is not one of CPython ${carried// /, }: the installed #! line names $chosen ($PY)"
  fi
  need="$chosen"; want="$(minor_of "$PY")"
fi
install_hint() {
  local id="" like="" ver="" ships="" other=""
  local osr="${CMDOP_INSTALL_OS_RELEASE:-/etc/os-release}"  # (tests point this elsewhere)
  if [ -r "$osr" ]; then
    id="$(. "$osr"; echo "${ID:-}")"; like="$(. "$osr"; echo "${ID_LIKE:-}")"
    ver="$(. "$osr"; echo "${VERSION_ID:-}")"
  fi
  ships="$(distro_pythons "$id" "$ver")"
  # The other way round: a build of cmdop for the python3 this machine has (3.10 or newer).
  if [ -n "${sys3:-}" ] && [ "$sys3" != "$want" ] && printf '%s\n' "$sys3" | grep -qE '^3\.(1[0-9]|[2-9][0-9])$'; then
    other="; or use the cmdop.pyz built for this machine's python3 $sys3 (build_zipapp.py --python-version $sys3)"
  fi
  case " $id $like " in
    *" debian "*|*" ubuntu "*)
      if [ -n "$ships" ] && ! printf ' %s ' $ships | grep -q " $want "; then
        if [ "$id" = ubuntu ]; then
          echo "sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install -y $need   (Ubuntu $ver ships Python $ships, not $want)$other"
        else
          echo "${id^} $ver ships Python $ships, not $want: install it with pyenv (pyenv install $want)$other"
        fi
      else
        echo "sudo apt-get install -y $need$other"
      fi ;;
    *" fedora "*|*" rhel "*|*" centos "*) echo "sudo dnf install -y $need$other" ;;
    *" suse "*|*" opensuse "*) echo "sudo zypper install -y ${need//./}$other" ;;
    *" arch "*) echo "install $need from the AUR, or use pyenv: pyenv install $want$other" ;;
    *) echo "install CPython $want so that '$need' is on PATH (or: pyenv install $want)$other" ;;
  esac
}
[ -n "$PY" ] || PY="$(command -v "$need" 2>/dev/null || true)"
have=""
[ -z "$PY" ] || { check_python "$PY"; have="$(minor_of "$PY")"; }
if [ -z "$PY" ] || { [ "$need" != python3 ] && [ "$have" != "$want" ]; } \
   || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' </dev/null 2>/dev/null; then
  found="none"; sys3=""
  if p3="$(command -v python3 2>/dev/null)" && [ -z "$(unsafe_python "$p3")" ]; then
    found="python3 $("$p3" -c 'import sys; print(sys.version.split()[0])' </dev/null 2>/dev/null || echo '?') at $p3"
    sys3="$("$p3" -c 'import sys; print("%d.%d" % sys.version_info[:2])' </dev/null 2>/dev/null | cut -d. -f1,2 || true)"
  fi
  [ -z "$PY" ] || found="$need $have at $PY; $found"
  die "cmdop needs Python $want ('$need' on PATH); found: $found" "$(install_hint)"
fi

# 4. Run it once from a private cache: proves it works on this machine before it replaces anything.
if ! out="$(SHIV_ROOT="$TMP/shiv" "$PY" "$PYZ" --version </dev/null 2>&1)"; then
  die "$base does not run here: $(printf '%s' "$out" | tail -n 1)" \
      "it needs x86_64/aarch64 Linux with glibc >= 2.17 matching the build"
fi
say "runs: $out"

# 5. Install: write beside the target, then rename over it.
TARGET="$PREFIX/$NAME"
writable_dir() { local d="$1"; while [ ! -e "$d" ]; do d="$(dirname "$d")"; done; [ -w "$d" ]; }
if [ "$(id -u)" != 0 ] && ! writable_dir "$PREFIX"; then
  command -v sudo >/dev/null 2>&1 || die "$PREFIX is not writable and sudo is not available" "re-run as root, or pass --prefix ~/.local/bin"
  SUDO=sudo
  say "$PREFIX is not writable: using sudo"
fi
if [ -f "$TARGET" ] && [ "$(sha256_of "$TARGET")" = "$actual" ] && [ -x "$TARGET" ]; then
  say "$TARGET is already this version; nothing to do"
else
  $SUDO mkdir -p "$PREFIX"
  STAGED="$PREFIX/.$NAME.new.$$"
  $SUDO cp "$PYZ" "$STAGED"
  $SUDO chmod 0755 "$STAGED"
  [ "$(sha256_of "$STAGED")" = "$actual" ] || die "copy to $STAGED was corrupted" "check free space in $PREFIX"
  $SUDO mv -f "$STAGED" "$TARGET"
  STAGED=""
  say "installed $TARGET"
fi
case ":$PATH:" in *":$PREFIX:"*) ;; *) say "note: $PREFIX is not on PATH" ;; esac

# 6. Optionally the systemd unit.
if [ -n "$SERVICE" ]; then
  if ! "$PY" "$TARGET" service install --help </dev/null 2>/dev/null | grep -q '^usage:'; then
    die "this cmdop has no 'service install' command yet; the binary is installed, the unit is not" \
        "copy systemd/cmdop.service to /etc/systemd/system/ and run: systemctl enable --now cmdop"
  fi
  # The unit names the real interpreter (not a pyenv shim, not whatever PATH holds under systemd).
  realpy="$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))' </dev/null)"
  if [ "$SERVICE" = user ]; then
    "$PY" "$TARGET" service install --user --exec-start "$realpy $TARGET" </dev/null
  else
    [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1 || die "a system unit needs root" "re-run as root or use --service=user"
    SVC_SUDO=""; [ "$(id -u)" = 0 ] || SVC_SUDO=sudo
    $SVC_SUDO "$PY" "$TARGET" service install --system --exec-start "$realpy $TARGET" </dev/null
  fi
fi
if [ -z "$SERVICE" ] && command -v systemctl >/dev/null 2>&1 \
   && systemctl is-active --quiet cmdop.service 2>/dev/null; then
  say "note: cmdop.service is running the previous version; restart it: systemctl restart cmdop"
fi
say "done: $TARGET ($out)"
