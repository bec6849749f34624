#!/usr/bin/env bash
# Builds stagegate's container image locally, FROM scratch: the binary (its debug
# symbols stripped) and the C libraries it links, nothing else; no base image, no
# registry. Push it where your cluster pulls from, or load it into a local cluster
# (`kind load docker-image stagegate:local`).
# Usage: deploy/image.sh [BINARY] [IMAGE]   (default target/release/stagegate, stagegate:local)
set -euo pipefail
binary=${1:-target/release/stagegate}
image=${2:-stagegate:local}
[ -x "$binary" ] || { echo "no stagegate binary at $binary (cargo build --release)" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/root/usr/local/bin" "$context/root/tmp" "$context/root/reports"
chmod 1777 "$context/root/tmp"
objcopy --strip-debug "$binary" "$context/root/usr/local/bin/stagegate"
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$context/root$(dirname "$lib")"
  cp -L "$lib" "$context/root$lib"
done
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
ENV PATH=/usr/local/bin
WORKDIR /reports
EXPOSE 7400
ENTRYPOINT ["/usr/local/bin/stagegate"]
DOCKERFILE
docker build -q -t "$image" "$context" >/dev/null
echo "$image"
