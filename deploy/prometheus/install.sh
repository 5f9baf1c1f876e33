#!/bin/sh
# Install Prometheus and promtool from Debian's `prometheus` package, once (idempotent).
# Called by `make setup` / `make test`. As root it runs apt-get; otherwise it prints the
# command to run. It never starts the Debian service: freshrec runs its own Prometheus
# (`freshrec prometheus up`) with deploy/prometheus/prometheus.yml.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus: found $(command -v prometheus) and $(command -v promtool)"
    exit 0
fi

INSTALL="apt-get install -y --no-install-recommends prometheus"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus: NOT INSTALLED and this is not a Debian/Ubuntu machine; install" >&2
    echo "prometheus: Prometheus 2.x (with promtool) by other means and put it on PATH." >&2
    echo "prometheus: the metrics e2e test and the promtool checks are skipped meanwhile." >&2
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "prometheus: NOT INSTALLED. Install it (with promtool) as root:" >&2
    echo "prometheus:     sudo apt-get update && sudo $INSTALL" >&2
    echo "prometheus: the metrics e2e test and the promtool checks are skipped meanwhile." >&2
    exit 0
fi

# Keep the package's init script from starting a system-wide Prometheus on :9090
# (policy-rc.d exit 101 = "action forbidden"); only if the machine has no policy already.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=""
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    ADDED_POLICY=1
fi
cleanup() { if [ -n "$ADDED_POLICY" ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

echo "prometheus: installing Debian's prometheus package (includes promtool):"
echo "prometheus:   apt-get update && $INSTALL"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends prometheus
echo "prometheus: installed $(command -v prometheus) ($(prometheus --version 2>&1 | head -n 1))"
echo "prometheus: the Debian service is not started; use \`freshrec prometheus up\`."
