#!/usr/bin/env bash
# Builds the image of the Helm chart from the repository's Dockerfile, with docker, podman
# or buildah (the first that works, in that order), tagged with the workspace version (the
# chart's appVersion):
#
#   ./scripts/build-image.sh                 # -> ghcr.io/example/referral-attribution:<version>
#   IMAGE_REPOSITORY=registry.example/ra ./scripts/build-image.sh
#   CONTAINER_TOOL=buildah ./scripts/build-image.sh --pull=never   # extra args go to the build
#
# Environment:
#   CONTAINER_TOOL    docker | podman | buildah: use this one instead of detecting.
#   IMAGE_REPOSITORY  the image name without tag (default: the chart's image.repository).
#   IMAGE_TAG         the tag (default: the workspace version in Cargo.toml).
#   BUILD_ISOLATION   podman/buildah only: --isolation (buildah's default here: chroot, which
#                     needs no OCI runtime; podman's default: its own).
# The last line of output is the built image's name.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "build-image: $*" >&2
  exit 1
}

# The workspace version: the `version` of [workspace.package] in Cargo.toml.
workspace_version() {
  awk '
    /^\[/ { section = $0; next }
    section == "[workspace.package]" && $1 == "version" {
      gsub(/[" ]/, "", $3); print $3; exit
    }' Cargo.toml
}

version="$(workspace_version)"
[[ -n "${version}" ]] || die "no version in [workspace.package] of Cargo.toml"
repository="${IMAGE_REPOSITORY:-ghcr.io/example/referral-attribution}"
image="${repository}:${IMAGE_TAG:-${version}}"

# The tool: docker only when its daemon answers (a docker CLI alone cannot build).
tool="${CONTAINER_TOOL:-}"
if [[ -z "${tool}" ]]; then
  if command -v docker >/dev/null 2>&1 && timeout 30 docker info >/dev/null 2>&1; then
    tool=docker
  elif command -v podman >/dev/null 2>&1; then
    tool=podman
  elif command -v buildah >/dev/null 2>&1; then
    tool=buildah
  elif command -v docker >/dev/null 2>&1; then
    die "docker is installed but its daemon does not answer (docker info failed), and neither podman nor buildah is installed (Debian: apt-get install buildah)"
  else
    die "no docker, podman or buildah: install one (Debian: apt-get install buildah)"
  fi
fi
command -v "${tool}" >/dev/null 2>&1 || die "CONTAINER_TOOL=${tool} is not installed"

case "${tool}" in
  docker)
    # RUN --mount=type=cache needs BuildKit (the default builder of current docker).
    command=(env DOCKER_BUILDKIT=1 docker build)
    ;;
  podman)
    command=(podman build --layers --force-rm)
    [[ -n "${BUILD_ISOLATION:-}" ]] && command+=(--isolation "${BUILD_ISOLATION}")
    ;;
  buildah)
    command=(buildah build-using-dockerfile --layers --force-rm --isolation "${BUILD_ISOLATION:-chroot}")
    ;;
  *)
    die "CONTAINER_TOOL must be docker, podman or buildah, not ${tool}"
    ;;
esac

echo "build-image: building ${image} with ${tool}" >&2

# scripts/test-image.sh makes stand-ins of the base images under their real names (for a
# machine without a registry); say so when they are what this build would start from.
if [[ "${tool}" != docker ]]; then
  awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | while read -r base; do
    if [[ "$("${tool}" inspect --type image --format \
      '{{index .OCIv1.Config.Labels "io.github.referral-attribution.stand-in"}}' "${base}" 2>/dev/null)" == true ]]; then
      echo "build-image: WARNING: ${base} here is the stand-in made by scripts/test-image.sh," \
        "not the official image: do not publish this build (${tool} rmi ${base}, then build with a registry)" >&2
    fi
  done
fi
command+=(--file Dockerfile --tag "${image}" "$@" .)
echo "+ ${command[*]}" >&2
"${command[@]}" >&2
echo "build-image: built ${image}" >&2
echo "${image}"
