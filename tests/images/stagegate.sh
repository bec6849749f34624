#!/usr/bin/env bash
# The tests' stagegate image: deploy/image.sh's, built from the binary under test and
# tagged with its hash, so a rebuilt binary gets a new image (older ones of this name
# go). Quick when it exists.
# Usage: bash tests/images/stagegate.sh BINARY [REPO]   (default stagegate-test/stagegate)
# Prints the image's name.
set -euo pipefail
binary=$1
repo=${2:-stagegate-test/stagegate}
exec 9>"${TMPDIR:-/tmp}/stagegate-image-build.lock"
flock 9
image="$repo:$(sha256sum "$binary" | cut -c1-16)"
if ! docker image inspect "$image" >/dev/null 2>&1; then
  bash "$(dirname "$0")/../../deploy/image.sh" "$binary" "$image" >/dev/null
  docker image ls "$repo" --format '{{.Repository}}:{{.Tag}}' | grep -vx "$image" | xargs -r docker rmi -f >/dev/null 2>&1 || true
fi
echo "$image"
