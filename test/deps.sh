# Sourced by test/run-tests.sh, demo/run and bench/run: installs, as root, the Debian 12
# packages that building, testing, the demo and the benchmarks need. Does nothing when they
# are all there.
# clang-14 and libclang-rt-14-dev: libFuzzer and the sanitizer runtimes (fuzz, sanitize suites).
# python3-psycopg: bench/run's PostgreSQL client; python3-matplotlib: its plots (bench/*.png).
# nginx-light (nginx and its echo module): bench/run's throughput sink. bench/run starts its own
# unprivileged nginx on a free loopback port; the package's nginx service is not used.
# pgbouncer: test/t/090_pgbouncer.pl starts its own unprivileged pgbouncer on a free loopback
# port; the package's pgbouncer service is not used.
# postgresql-15-auto-failover (pg_autoctl): test/t/095_auto_failover.pl runs its own monitor and
# two nodes in temporary directories; no service of the package is used.
# prometheus-postgres-exporter: test/t/110_monitoring.pl runs it on a free loopback port with
# monitoring/postgres_exporter.yml; prometheus: its promtool checks monitoring/alerts.yml.
BUNCE_PACKAGES="build-essential cmake pkg-config postgresql-15 postgresql-server-dev-15
  libcurl4-openssl-dev nlohmann-json3-dev libgtest-dev libipc-run-perl python3 curl
  clang-14 libclang-rt-14-dev python3-psycopg nginx-light pgbouncer postgresql-15-auto-failover
  prometheus-postgres-exporter prometheus python3-matplotlib"
install_bunce_deps() {
    [ "$(id -u)" = 0 ] || return 0
    # shellcheck disable=SC2086
    dpkg -s $BUNCE_PACKAGES >/dev/null 2>&1 && return 0
    echo "== installing packages"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    # Wait for a concurrent apt/dpkg instead of failing on its lock.
    local apt="apt-get -o DPkg::Lock::Timeout=300"
    $apt update -qq && $apt install -y -qq --no-install-recommends $BUNCE_PACKAGES >/dev/null
}
