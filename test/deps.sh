# Sourced by test/run-tests.sh and demo/run: installs, as root, the Debian 12 packages that
# building, testing and the demo need. Does nothing when they are all there.
BUNCE_PACKAGES="build-essential cmake pkg-config postgresql-15 postgresql-server-dev-15
  libcurl4-openssl-dev nlohmann-json3-dev libgtest-dev libipc-run-perl python3 curl"
install_bunce_deps() {
    [ "$(id -u)" = 0 ] || return 0
    # shellcheck disable=SC2086
    dpkg -s $BUNCE_PACKAGES >/dev/null 2>&1 && return 0
    echo "== installing packages"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $BUNCE_PACKAGES >/dev/null
}
