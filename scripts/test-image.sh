#!/usr/bin/env bash
# Builds the Dockerfile, unchanged, with buildah and runs what it built, on a machine with no
# container registry and no working container runtime (docs/IMAGE.md):
#
#   1. installs buildah, debootstrap and curl (apt) when missing;
#   2. makes stand-in base images under the exact names of the Dockerfile's FROM lines, unless
#      images of those names are present already (then they are reused as they are):
#      * rust:1-bookworm: Debian bookworm (debootstrap) carrying this machine's Rust
#        toolchain where the official image keeps it (/usr/local/rustup, /usr/local/cargo,
#        with RUSTUP_HOME, CARGO_HOME and PATH set the same way);
#      * gcr.io/distroless/cc-debian12:nonroot: what distroless cc-debian12 ships, from
#        Debian packages: glibc, libgcc, ca-certificates, tzdata (and netbase), the nonroot
#        user (65532) as its user; no shell, no package manager;
#   3. builds the image with scripts/build-image.sh (buildah, --isolation chroot, --layers);
#   4. mounts the image's root filesystem (buildah from + buildah mount) and runs each binary
#      in a chroot as the image's user (10001:10001), with the image's environment: the
#      three binaries' --version, then referral-api (the image's CMD) on its /data, answering
#      /healthz, a referral code PUT, a click POST (201) and the read of that click;
#   5. prints the image's size and, when all of it held, a last line `image ok: <size>`.
#
# Needs root (buildah's storage, debootstrap, chroot) and apt (Debian/Ubuntu). On 2 cores:
# about 11 minutes the first time (the stand-ins ~70 s, then a cold release build), 10-40 s
# after that (stand-ins and build layers are reused; the build's cargo registry and target/
# are buildah cache mounts, so a source change rebuilds only the changed crates). Disk:
# ~1.1 GB builder stand-in, ~2 GB build cache (/var/tmp/buildah-cache), ~2 GB of layers.
#
# Environment:
#   REBUILD_STAND_INS=1  remove the stand-in base images first and make them again.
#   DEBIAN_MIRROR        the builder stand-in's mirror (default http://deb.debian.org/debian).
#   KEEP_IMAGE_MOUNT=1   leave the image's working container mounted (for a look around).
set -euo pipefail
cd "$(dirname "$0")/.."

started_at="$(date +%s)"
step() { echo "== [$(( $(date +%s) - started_at ))s] $*"; }
note() { echo "   $*"; }
die() {
  echo "test-image: FAILED: $*" >&2
  exit 1
}

[[ "$(id -u)" == 0 ]] || die "run as root (buildah's storage, debootstrap and chroot need it)"
command -v apt-get >/dev/null 2>&1 || die "needs apt-get (a Debian or Ubuntu machine)"

# The names the Dockerfile builds from; the stand-ins below are made for exactly these.
BUILDER_IMAGE="rust:1-bookworm"
RUNTIME_IMAGE="gcr.io/distroless/cc-debian12:nonroot"
STAND_IN_LABEL="io.github.referral-attribution.stand-in"
# The uid:gid the image must run as (the Dockerfile's USER, the chart's runAsUser).
IMAGE_USER="10001:10001"

work="$(mktemp -d /var/tmp/test-image.XXXXXX)"
containers=()
# The containers that existed before the build: buildah leaves its build containers behind
# when it is killed (Ctrl-C, a CI timeout); the trap removes those that appeared since.
containers_before_build=""
build_done=""
server_pid=""
stand_in_root=""
cleanup() {
  local status=$?
  # An interrupted debootstrap can leave its /proc and /sys mounts in the stand-in's root.
  if [[ -n "${stand_in_root}" ]]; then
    awk -v root="${stand_in_root}/" 'index($2, root) == 1 { print $2 }' /proc/mounts \
      | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
  fi
  if [[ -n "${server_pid}" ]] && kill -0 "${server_pid}" 2>/dev/null; then
    kill -KILL "${server_pid}" 2>/dev/null || true
    wait "${server_pid}" 2>/dev/null || true
  fi
  local container
  for container in "${containers[@]}"; do
    if [[ "${KEEP_IMAGE_MOUNT:-}" == 1 && "${status}" == 0 ]]; then
      echo "   kept container ${container} mounted at $(buildah mount "${container}")"
      continue
    fi
    buildah umount "${container}" >/dev/null 2>&1 || true
    buildah rm "${container}" >/dev/null 2>&1 || true
  done
  if [[ -n "${containers_before_build}" && -z "${build_done}" ]]; then
    for container in $(buildah containers --quiet --notruncate 2>/dev/null \
        | grep -vxF -f "${work}/containers-before-build"); do
      echo "   removing ${container}, left by the interrupted build" >&2
      buildah umount "${container}" >/dev/null 2>&1 || true
      buildah rm "${container}" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "${work}"
  if [[ "${status}" != 0 ]]; then
    echo "test-image: failed after $(( $(date +%s) - started_at ))s (exit ${status})" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Installs the Debian packages for the given commands when missing (apt-get update only when
# the first attempt fails, e.g. on a fresh machine with no package lists).
install_tools() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  step "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >"${work}/apt.log" 2>&1; then
    apt-get update >>"${work}/apt.log" 2>&1 || { cat "${work}/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y --no-install-recommends "${missing[@]}" >>"${work}/apt.log" 2>&1 \
      || { tail -20 "${work}/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A working container of image $1 in ${container}, which the EXIT trap unmounts and removes
# (not run in a $(...) subshell, so that the trap knows it).
new_container() {
  container="$(buildah from --pull=never "$1")"
  containers+=("${container}")
}

# The root filesystem of ${container}, mounted (never empty or /: files are removed in it).
mount_container() {
  root="$(buildah mount "${container}")"
  [[ -d "${root}" && "${root}" != / ]] || die "buildah mount ${container} gave '${root}'"
}

# ---------------------------------------------------------------------------------------
step "checking the tools"
install_tools buildah=buildah debootstrap=debootstrap curl=curl sha256sum=coreutils
note "$(buildah --version)"

# The Dockerfile's FROM lines must be the two images this script knows how to stand in for.
mapfile -t from_images < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile)
if [[ "${from_images[*]}" != "${BUILDER_IMAGE} ${RUNTIME_IMAGE}" ]]; then
  die "the Dockerfile builds FROM ${from_images[*]}, this script makes stand-ins for \
${BUILDER_IMAGE} and ${RUNTIME_IMAGE}: update scripts/test-image.sh"
fi

if [[ "${REBUILD_STAND_INS:-}" == 1 ]]; then
  for name in "${BUILDER_IMAGE}" "${RUNTIME_IMAGE}"; do
    if [[ "$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"${STAND_IN_LABEL}\"}}" "${name}" 2>/dev/null)" == true ]]; then
      step "removing the stand-in ${name} (REBUILD_STAND_INS=1)"
      buildah rmi "${name}" >/dev/null
    fi
  done
fi

# ---------------------------------------------------------------------------------------
# The builder: Debian bookworm and this machine's Rust toolchain, laid out like the official
# rust image (rustup's proxies in $CARGO_HOME/bin, the toolchain in $RUSTUP_HOME).
make_builder_stand_in() {
  if ! command -v rustc >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
    die "the builder stand-in copies this machine's rustup toolchain: install Rust with rustup (https://rustup.rs)"
  fi
  local sysroot release host toolchain rustup_bin container root
  sysroot="$(rustc --print sysroot)"
  release="$(rustc -vV | awk '$1 == "release:" { print $2 }')"
  host="$(rustc -vV | awk '$1 == "host:" { print $2 }')"
  toolchain="${release}-${host}"
  rustup_bin="$(readlink -f "$(command -v rustup)")"
  note "toolchain: ${sysroot} (rustc ${release}) -> /usr/local/rustup/toolchains/${toolchain}"

  new_container scratch
  mount_container
  stand_in_root="${root}"
  local mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  # A slice of buildpack-deps:bookworm, the official image's base: a C toolchain, curl, git.
  # Everything else the build needs the Dockerfile installs itself.
  note "debootstrap bookworm from ${mirror} (log: ${work}/debootstrap.log)"
  debootstrap --variant=minbase \
    --include=ca-certificates,curl,git,gcc,libc6-dev,make,netbase,xz-utils \
    bookworm "${root}" "${mirror}" >"${work}/debootstrap.log" 2>&1 \
    || { tail -30 "${work}/debootstrap.log" >&2; die "debootstrap failed"; }
  # The official image's sources (with security updates), no caches, an empty /dev.
  rm -f "${root}/etc/apt/sources.list"
  cat >"${root}/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # The local CAs this machine trusts (Debian's place for them), so that the build reaches
  # crates.io from behind a TLS-inspecting proxy as this machine does. Public certificates
  # only; none on a machine with direct access.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    note "adding this machine's local CA certificates ($(find /usr/local/share/ca-certificates -name '*.crt' | wc -l) in /usr/local/share/ca-certificates)"
    cp -r /usr/local/share/ca-certificates/. "${root}/usr/local/share/ca-certificates/"
    chroot "${root}" update-ca-certificates >>"${work}/debootstrap.log" 2>&1 \
      || die "update-ca-certificates failed in the builder stand-in"
  fi
  rm -rf "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/* "${root:?}"/dev/*

  # The toolchain, without its HTML docs.
  mkdir -p "${root}/usr/local/rustup/toolchains" "${root}/usr/local/cargo/bin"
  tar -C "$(dirname "${sysroot}")" --exclude="$(basename "${sysroot}")/share/doc" \
    -cf - "$(basename "${sysroot}")" \
    | tar -C "${root}/usr/local/rustup/toolchains" \
      --transform="s,^$(basename "${sysroot}"),${toolchain}," -xf -
  cat >"${root}/usr/local/rustup/settings.toml" <<EOF
version = "12"
default_toolchain = "${toolchain}"
profile = "minimal"
auto_self_update = "disable"

[overrides]
EOF
  cp "${rustup_bin}" "${root}/usr/local/cargo/bin/rustup"
  local proxy
  for proxy in cargo cargo-clippy cargo-fmt clippy-driver rust-gdb rust-gdbgui rust-lldb rustc rustdoc rustfmt; do
    ln "${root}/usr/local/cargo/bin/rustup" "${root}/usr/local/cargo/bin/${proxy}"
  done
  chmod -R a+w "${root}/usr/local/rustup" "${root}/usr/local/cargo"
  buildah umount "${container}" >/dev/null

  buildah config \
    --env RUSTUP_HOME=/usr/local/rustup \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="${release}" \
    --cmd bash \
    --label "${STAND_IN_LABEL}=true" \
    --label "${STAND_IN_LABEL}.rust=${release}" \
    "${container}"
  buildah commit --quiet --rm "${container}" "${BUILDER_IMAGE}" >/dev/null
}

# The runtime: the files of the Debian packages distroless cc-debian12 is made of (dpkg -x,
# no maintainer scripts, so the CA bundle is assembled here as update-ca-certificates
# would), its /etc/passwd and /etc/group (root, nonroot 65532, nobody), user nonroot.
make_runtime_stand_in() {
  local packages=(libc6 libgcc-s1 ca-certificates tzdata netbase)
  local container root deb
  # apt-get download takes this machine's versions: Debian 12's only on Debian 12.
  # shellcheck disable=SC1091
  if [[ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" != bookworm ]]; then
    note "WARNING: this machine is not Debian bookworm: the runtime stand-in gets its release's packages"
  fi
  mkdir -p "${work}/debs"
  note "apt-get download ${packages[*]}"
  if ! (cd "${work}/debs" && apt-get -o APT::Sandbox::User=root download "${packages[@]}") >"${work}/download.log" 2>&1; then
    apt-get update >>"${work}/download.log" 2>&1 || true
    (cd "${work}/debs" && apt-get -o APT::Sandbox::User=root download "${packages[@]}") >>"${work}/download.log" 2>&1 \
      || { tail -20 "${work}/download.log" >&2; die "apt-get download ${packages[*]} failed"; }
  fi
  new_container scratch
  mount_container
  for deb in "${work}"/debs/*.deb; do
    note "  $(basename "${deb}")"
    dpkg-deb -x "${deb}" "${root}"
  done
  # What distroless leaves out: docs other than copyrights, manuals, the lintian overrides.
  find "${root}/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "${root:?}/usr/share/man" "${root:?}/usr/share/lintian" "${root:?}/usr/share/info"
  mkdir -p "${root}/etc/ssl/certs"
  find "${root}/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort \
    | xargs cat >"${root}/etc/ssl/certs/ca-certificates.crt"
  cat >"${root}/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"${root}/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
  cat >"${root}/etc/nsswitch.conf" <<'EOF'
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
EOF
  cat >"${root}/etc/os-release" <<'EOF'
PRETTY_NAME="Distroless (stand-in made by scripts/test-image.sh)"
NAME="Debian GNU/Linux"
ID="debian"
VERSION_ID="12"
VERSION="Debian GNU/Linux 12 (bookworm)"
HOME_URL="https://github.com/GoogleContainerTools/distroless"
EOF
  install -d -m 0700 "${root}/root"
  install -d -m 0700 -o 65532 -g 65532 "${root}/home/nonroot"
  install -d -m 1777 "${root}/tmp"
  buildah umount "${container}" >/dev/null

  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --user 65532 \
    --workingdir /home/nonroot \
    --label "${STAND_IN_LABEL}=true" \
    "${container}"
  buildah commit --quiet --rm "${container}" "${RUNTIME_IMAGE}" >/dev/null
}

step "base images"
if image_exists "${BUILDER_IMAGE}"; then
  note "${BUILDER_IMAGE}: present, reused (REBUILD_STAND_INS=1 makes the stand-ins again)"
else
  step "making the stand-in ${BUILDER_IMAGE}"
  make_builder_stand_in
fi
if image_exists "${RUNTIME_IMAGE}"; then
  note "${RUNTIME_IMAGE}: present, reused"
else
  step "making the stand-in ${RUNTIME_IMAGE}"
  make_runtime_stand_in
fi
for name in "${BUILDER_IMAGE}" "${RUNTIME_IMAGE}"; do
  note "${name}: $(buildah images --format '{{.Size}}' "${name}" | head -n 1)$(
    [[ "$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"${STAND_IN_LABEL}\"}}" "${name}")" == true ]] && echo ", stand-in")"
done

# ---------------------------------------------------------------------------------------
step "building the Dockerfile (scripts/build-image.sh, buildah)"
build_started="$(date +%s)"
{ echo "-"; buildah containers --quiet --notruncate; } >"${work}/containers-before-build"
containers_before_build=yes
# The whole output goes to a log; shown here: the build's steps, the end of cargo's build
# and the binaries' libraries (the Dockerfile's ldd).
set +e
CONTAINER_TOOL=buildah ./scripts/build-image.sh --pull=never 2>&1 >"${work}/image-name" \
  | tee "${work}/build.log" \
  | grep --line-buffered -E '^\+ |^\[[0-9]+/[0-9]+\] STEP|^ *Finished|^ *Compiling referral-|=>|^[[:space:]]*/lib64/ld-linux|^Error|^error'
build_status="${PIPESTATUS[0]}"
set -e
if [[ "${build_status}" != 0 ]]; then
  echo "--- the end of the build's output:" >&2
  tail -n 40 "${work}/build.log" >&2
  die "the image did not build (exit ${build_status})"
fi
build_done=yes
image="$(tail -n 1 "${work}/image-name")"
step "built ${image} in $(( $(date +%s) - build_started ))s"

# buildah --layers keeps every step's image as the next build's cache; after a source change
# the old ones (~300 MB each: the binaries) are garbage. Remove the untagged images built on
# the stand-ins that this build did not use (its log names each step's image: "--> ID").
prune_stale_layers() {
  local used removed=0 id name
  used="$(grep -oE '^--> (Using cache )?[0-9a-f]{11,}' "${work}/build.log" \
    | awk '{ print substr($NF, 1, 11) }' | sort -u)"
  [[ -n "${used}" ]] || return 0
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local removed_now=0
    while read -r id name; do
      [[ "${name}" == "<none>:<none>" ]] || continue
      grep -qx "${id:0:11}" <<<"${used}" && continue
      if buildah rmi "${id}" >/dev/null 2>&1; then
        removed_now=$((removed_now + 1))
      fi
    done < <(buildah images --all --noheading --filter "label=${STAND_IN_LABEL}=true" \
      --format '{{.ID}} {{.Name}}:{{.Tag}}')
    removed=$((removed + removed_now))
    [[ "${removed_now}" -gt 0 ]] || break
  done
  if [[ "${removed}" -gt 0 ]]; then
    note "removed ${removed} stale build-cache images of earlier builds"
  fi
}
prune_stale_layers

# ---------------------------------------------------------------------------------------
step "running the image's binaries (chroot into its root filesystem as ${IMAGE_USER})"
user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "${image}")"
[[ "${user}" == "${IMAGE_USER}" ]] || die "the image's user is '${user}', not ${IMAGE_USER}"
mapfile -t image_env < <(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "${image}" | sed '/^$/d')
note "image env: ${image_env[*]}"
cmd="$(buildah inspect --type image --format '{{range .OCIv1.Config.Cmd}}{{.}} {{end}}' "${image}")"
note "image cmd: ${cmd}"
new_container "${image}"
mount_container
note "root filesystem: ${root}"

# Runs a command of the image in its root filesystem as the image's user, with only the
# image's environment: "${env_of_image[@]}" [NAME=value...] "${chroot_to_image[@]}" COMMAND.
env_of_image=(env -i "${image_env[@]}")
chroot_to_image=(chroot --userspec="${IMAGE_USER}" --groups="${IMAGE_USER#*:}" "${root}")

version="$(awk '/^\[/ { s = $0; next } s == "[workspace.package]" && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }' Cargo.toml)"
for binary in referral-ingest referral-aggregator referral-api; do
  [[ -x "${root}/usr/local/bin/${binary}" ]] || die "/usr/local/bin/${binary} is not in the image"
  output="$("${env_of_image[@]}" "${chroot_to_image[@]}" "/usr/local/bin/${binary}" --version 2>&1)" \
    || die "${binary} --version failed in the image: ${output}"
  [[ "${output}" == "${binary} ${version}" ]] \
    || die "${binary} --version printed '${output}', not '${binary} ${version}'"
  note "${binary} --version: ${output}"
done
# Where the image's dynamic loader finds referral-api's libraries (the image's files only).
libraries="$("${env_of_image[@]}" "${chroot_to_image[@]}" /lib64/ld-linux-x86-64.so.2 --list /usr/local/bin/referral-api)" \
  || die "the image's loader cannot resolve referral-api's libraries: ${libraries}"
note "libraries: $(awk '$2 == "=>" { printf "%s %s  ", $1, $3 }' <<<"${libraries}")"

# A free loopback port (nothing answers on it).
free_port() {
  local port
  for _ in $(seq 50); do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      echo "${port}"
      return 0
    fi
  done
  die "no free port found"
}
port="$(free_port)"
base="http://127.0.0.1:${port}"
# A bearer token as an operator would set it: only its SHA-256 in the environment.
token="image-test-$(date +%s%N)-${RANDOM}"
token_hash="$(printf %s "${token}" | sha256sum | cut -d' ' -f1)"

# The image's CMD (referral-api, the whole service on the image's /data), on a loopback port.
[[ "${cmd}" == "/usr/local/bin/referral-api " ]] || die "the image's CMD is '${cmd}', not /usr/local/bin/referral-api"
note "starting referral-api on ${base} (REFERRAL_DATA_DIR from the image)"
# env execs chroot, which execs the binary: $! is referral-api's pid.
"${env_of_image[@]}" REFERRAL_LISTEN="127.0.0.1:${port}" \
  REFERRAL_API_TOKENS="sha256:${token_hash}=read+write+admin" \
  "${chroot_to_image[@]}" /usr/local/bin/referral-api >"${work}/referral-api.log" 2>&1 &
server_pid=$!

server_failed() {
  echo "--- referral-api's output:" >&2
  cat "${work}/referral-api.log" >&2 || true
  die "$*"
}
for attempt in $(seq 300); do
  if health="$(curl -fsS --max-time 2 "${base}/healthz" 2>/dev/null)"; then
    break
  fi
  kill -0 "${server_pid}" 2>/dev/null || server_failed "referral-api exited before answering /healthz"
  [[ "${attempt}" == 300 ]] && server_failed "referral-api did not answer /healthz within 30s"
  sleep 0.1
done
note "GET /healthz -> ${health}"
[[ "${health}" == *'"ok"'* ]] || server_failed "/healthz answered ${health}"

# request METHOD PATH [BODY] [AUTH]: prints "STATUS BODY".
request() {
  local args=(-sS --max-time 10 -o "${work}/body" -w '%{http_code}' -X "$1" "${base}$2")
  [[ -n "${3:-}" ]] && args+=(-H 'content-type: application/json' -d "$3")
  [[ "${4:-}" == auth ]] && args+=(-H "authorization: Bearer ${token}")
  local status
  status="$(curl "${args[@]}")" || server_failed "$1 $2: no answer"
  echo "${status} $(cat "${work}/body")"
}
expect() {
  local want="$1" got="$2" what="$3"
  note "${what} -> ${got}"
  [[ "${got%% *}" == "${want}" ]] || server_failed "${what}: expected ${want}, got ${got}"
}
code="IMG-$(( RANDOM % 9000 + 1000 ))"
expect 401 "$(request PUT "/api/v1/referral-codes/${code}" '{"mentor_id":"usr_1"}')" \
  "PUT /api/v1/referral-codes/${code} (no token)"
got="$(request PUT "/api/v1/referral-codes/${code}" '{"mentor_id":"usr_1"}' auth)"
note "PUT /api/v1/referral-codes/${code} (bearer) -> ${got}"
[[ "${got%% *}" == 200 || "${got%% *}" == 201 ]] || server_failed "PUT referral code: expected 200/201, got ${got}"
got="$(request POST /api/v1/referral-attributions "{\"code\":\"${code}\"}")"
expect 201 "${got}" "POST /api/v1/referral-attributions"
id="$(grep -o '"id":"[^"]*"' <<<"${got}" | head -n 1 | cut -d'"' -f4)"
[[ -n "${id}" ]] || server_failed "the click's 201 has no id: ${got}"
got="$(request GET "/api/v1/referral-attributions/${id}" "" auth)"
expect 200 "${got}" "GET /api/v1/referral-attributions/${id}"
[[ "${got}" == *"\"mentor_id\":\"usr_1\""* ]] || server_failed "the stored click is not usr_1's: ${got}"

kill -TERM "${server_pid}"
server_status=0
wait "${server_pid}" || server_status=$?
server_pid=""
[[ "${server_status}" == 0 ]] || server_failed "referral-api exited ${server_status} on SIGTERM"
note "referral-api stopped on SIGTERM (exit 0)"
owners="$(find "${root}/data" -mindepth 1 -printf '%u:%g\n' | sort -u | tr '\n' ' ')"
note "/data after the run: $(find "${root}/data" -mindepth 1 | wc -l) entries, owned by ${owners}"
[[ "${owners}" == "10001:10001 " ]] || die "/data holds files not owned by 10001:10001: ${owners}"

# ---------------------------------------------------------------------------------------
size="$(buildah images --format '{{.Size}}' "${image}" | head -n 1)"
step "image ${image}: ${size} (on the stand-in base images), all checks held in $(( $(date +%s) - started_at ))s"
echo "image ok: ${size}"
