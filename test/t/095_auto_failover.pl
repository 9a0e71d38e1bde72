# A real failover with pg_auto_failover: a monitor and two nodes on this machine, each node with
# bunce preloaded and configured the same way. Events committed on the primary before
# `pg_autoctl perform failover`, and before the primary is killed (SIGKILL of its postmaster
# and of its pg_autoctl), are all delivered by the new primary; the old primary, back as a
# standby, sends nothing; only requests in flight at the switch are sent twice, with the same
# Idempotency-Key, marked possible_duplicate and counted in bunce.status.possibly_duplicated.
#
# pg_autoctl creates and runs the instances itself (initdb, pg_basebackup, pg_rewind, promote);
# the test only adds bunce's settings to each node's postgresql.conf between `pg_autoctl create`
# and `pg_autoctl run`, and talks to the instances over TCP on 127.0.0.1.
use strict;
use warnings;

use IPC::Run ();
use POSIX ();
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my ($PG_AUTOCTL) = grep { -x $_ } ('/usr/lib/postgresql/15/bin/pg_autoctl', '/usr/bin/pg_autoctl');
plan skip_all => 'pg_autoctl not found (Debian package postgresql-15-auto-failover)'
  unless $PG_AUTOCTL;

my $N             = 200;
my $MAX_IN_FLIGHT = 16;
# Every 5th answer comes 3 s late: longer than the 2 s a stopping worker gives its requests in
# flight, so a switch leaves some of them unanswered. request_timeout is above the delay, so
# that no request times out and is retried on its own.
my @SLOW          = (every => { nth => 5, delay_ms => 3000 });
my $CMD_TIMEOUT   = 90;    # any one pg_autoctl command
my $t_start       = time();

my $bindir = `pg_config --bindir`;
chomp $bindir;
my $PG_CTL = "$bindir/pg_ctl";
die "no pg_ctl in $bindir" unless -x $PG_CTL;

# Everything pg_autoctl keeps outside PGDATA (its .cfg, state and pid files) stays in the test's
# temporary directory, not in ~postgres; it talks TCP to 127.0.0.1, never to PGHOST's socket.
my $xdg = PostgreSQL::Test::Utils::tempdir('xdg');
for my $d (qw(config data run))
{
	mkdir "$xdg/$d" or die "mkdir $xdg/$d: $!";
	chmod 0700, "$xdg/$d";
}
$ENV{XDG_CONFIG_HOME} = "$xdg/config";
$ENV{XDG_DATA_HOME}   = "$xdg/data";
$ENV{XDG_RUNTIME_DIR} = "$xdg/run";
$ENV{PGHOST}          = '127.0.0.1';
delete @ENV{qw(PGPORT PGDATA PGUSER)};

my $bunce = BunceTest::Standin->start(rate_limit => 0);

# ---- processes --------------------------------------------------------------------------------

my %service;    # pgdata => { pid, log } of the `pg_autoctl ... run` we started for it

sub autoctl
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ $PG_AUTOCTL, @args ], '<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout($CMD_TIMEOUT));
	};
	my $why = $@ ? "timed out or failed: $@" : "exit status $?";
	note("pg_autoctl @args: $why\n$err") unless $ok;
	return wantarray ? ($ok, $out, $err) : $ok;
}

# Starts `pg_autoctl run` for $pgdata in a session of its own (its Postgres is in the same
# process group), output to a log file.
sub autoctl_run
{
	my ($node) = @_;
	my $pgdata = $node->data_dir;
	my $log = $node->basedir . '/pg_autoctl.log';
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		POSIX::setsid();
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>>', $log) or POSIX::_exit(126);
		open(STDERR, '>&', \*STDOUT);
		exec($PG_AUTOCTL, 'run', '--pgdata', $pgdata) or POSIX::_exit(127);
	}
	$service{$pgdata} = { pid => $pid, log => $log };
	note("pg_autoctl run --pgdata $pgdata: pid $pid");
	return $pid;
}

sub alive { my ($pid) = @_; return $pid && kill(0, $pid); }

sub reap
{
	my ($pgdata) = @_;
	my $s = $service{$pgdata} or return 1;
	my $done = wait_for("pg_autoctl $s->{pid} to exit",
		sub { waitpid($s->{pid}, POSIX::WNOHANG()) == $s->{pid} || !alive($s->{pid}) },
		timeout => 20);
	delete $service{$pgdata} if $done;
	return $done;
}

sub postmaster_pid
{
	my ($pgdata) = @_;
	open(my $fh, '<', "$pgdata/postmaster.pid") or return 0;
	my $pid = <$fh>;
	close $fh;
	chomp $pid if defined $pid;
	return $pid // 0;
}

# `pg_autoctl stop`, then signals to whatever is left of that service and its Postgres.
sub stop_service
{
	my ($pgdata, %opt) = @_;
	my $s = $service{$pgdata} or return;
	autoctl('stop', '--pgdata', $pgdata, $opt{immediate} ? ('--immediate') : ());
	return if reap($pgdata);
	note("pg_autoctl for $pgdata did not stop: signalling its group $s->{pid}");
	kill 'TERM', -$s->{pid};
	return if reap($pgdata);
	kill 'KILL', -$s->{pid};
	my $pm = postmaster_pid($pgdata);
	kill 'QUIT', $pm if alive($pm);
	reap($pgdata);
	return;
}

my @order;    # pgdata of every service, monitor first
END
{
	local $?;
	stop_service($_, immediate => 1) for reverse @order;
}

# ---- the instances ----------------------------------------------------------------------------

# A Cluster object for an instance pg_autoctl creates in its data_dir, reached over TCP.
sub instance
{
	my ($name) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->{_host} = '127.0.0.1';    # pg_autoctl's instances keep their sockets elsewhere
	push @order, $node->data_dir;
	return $node;
}

# bunce's settings, the same on every node (pg_auto_failover preloads pg_stat_statements:
# kept). Rewritten in each node's postgresql.conf after `pg_autoctl create`, after its include
# of postgresql-auto-failover.conf, so they take precedence; a standby's copy of the primary's
# postgresql.conf (pg_basebackup) is replaced by its own. request_timeout overrides bunce_conf's:
# it must outlast the stand-in's slow answers.
my $BUNCE_CONF = "# bunce (095_auto_failover) begin\n"
  . bunce_conf($bunce->url, preload => 'pg_stat_statements,bunce') . <<"EOC";
bunce.request_timeout = '10s'
bunce.rate_limit = 0
bunce.max_in_flight = $MAX_IN_FLIGHT
# test machine: pg_autoctl's tuning gives shared_buffers a quarter of the RAM
shared_buffers = '128MB'
# bunce (095_auto_failover) end
EOC

sub configure_node
{
	my ($node) = @_;
	my $file = $node->data_dir . '/postgresql.conf';
	my $conf = slurp_file($file);
	$conf =~ s/^# bunce \(095_auto_failover\) begin\n.*?^# bunce \(095_auto_failover\) end\n//ms;
	open(my $fh, '>', $file) or die "$file: $!";
	print $fh $conf, $BUNCE_CONF;
	close $fh;
	return;
}

# "name:reported/goal ..." of the monitor's nodes, by name.
sub formation
{
	my ($monitor) = @_;
	my ($out, $err) = ('', '');
	$monitor->psql('pg_auto_failover',
		"SELECT string_agg(nodename || ':' || reportedstate || '/' || goalstate, ' ' ORDER BY nodename) "
		  . 'FROM pgautofailover.node',
		stdout => \$out, stderr => \$err);
	return $out;
}

sub wait_formation
{
	my ($monitor, $want, $timeout) = @_;
	my $last = '';
	my $ok = wait_for("formation [$want]",
		sub { $last = formation($monitor); $last eq $want },
		timeout => $timeout // 60, interval_ms => 200);
	diag("formation: $last") unless $ok;
	return $ok;
}

my $monitor = instance('monitor');
my $node_a  = instance('node_a');
my $node_b  = instance('node_b');
my $MONITOR_URI = 'postgres://autoctl_node@127.0.0.1:' . $monitor->port
  . '/pg_auto_failover?sslmode=disable';

# The monitor, with health checks fast enough for a short test: a node that stops answering
# and reporting is considered unhealthy after 5 s (defaults: checks every 5 s, 20 s).
ok( autoctl('create', 'monitor', '--pgctl', $PG_CTL, '--pgdata', $monitor->data_dir,
		'--pgport', $monitor->port, '--hostname', '127.0.0.1', '--auth', 'trust', '--no-ssl'),
	'pg_autoctl create monitor') or die 'setup: no monitor';
ok(autoctl('config', 'set', '--pgdata', $monitor->data_dir, 'postgresql.listen_addresses', '127.0.0.1'),
	'the monitor listens on 127.0.0.1 only');
$monitor->append_conf('postgresql.conf', <<'EOC');
shared_buffers = '128MB'
pgautofailover.health_check_period = 1000
pgautofailover.health_check_timeout = 2000
pgautofailover.health_check_max_retries = 1
pgautofailover.health_check_retry_delay = 500
pgautofailover.node_considered_unhealthy_timeout = 5000
EOC
autoctl_run($monitor);
ok(wait_sql($monitor, 'SELECT count(*) FROM pgautofailover.formation', '1', db => 'pg_auto_failover'),
	'the monitor runs') or die 'setup: the monitor does not run';

sub create_node
{
	my ($node) = @_;
	return autoctl('create', 'postgres', '--pgctl', $PG_CTL, '--pgdata', $node->data_dir,
		'--pgport', $node->port, '--pghost', '127.0.0.1', '--listen', '127.0.0.1',
		'--hostname', '127.0.0.1', '--name', $node->name, '--monitor', $MONITOR_URI,
		'--auth', 'trust', '--no-ssl', '--dbname', 'postgres');
}

# Node A: created (initdb, registered as "single", left stopped), configured, run.
my $t0 = time();
ok(create_node($node_a), 'pg_autoctl create postgres: node_a') or die 'setup: no node_a';
configure_node($node_a);
autoctl_run($node_a);
ok(wait_formation($monitor, 'node_a:single/single'), 'node_a runs as single')
  or die 'setup: node_a does not run';
ok(wait_sql($node_a, 'SELECT pg_is_in_recovery()', 'f'), 'node_a accepts connections');
$node_a->safe_psql('postgres', 'CREATE EXTENSION bunce');
$node_a->safe_psql('postgres', 'SELECT pg_reload_conf()');    # the worker looks now
ok(wait_sql($node_a, 'SELECT state FROM bunce.status', 'running'), 'bunce delivers on node_a')
  or die 'setup: bunce does not run on node_a';

# Node B: pg_basebackup of node_a (the extension comes with it), its own bunce settings, run.
ok(create_node($node_b), 'pg_autoctl create postgres: node_b') or die 'setup: no node_b';
configure_node($node_b);
autoctl_run($node_b);
ok(wait_formation($monitor, 'node_a:primary/primary node_b:secondary/secondary'),
	'node_a primary, node_b secondary') or die 'setup: no primary and secondary';
note(sprintf('formation up in %.1f s', time() - $t0));

for my $node ($node_a, $node_b)
{
	like(sql_value($node, 'SHOW shared_preload_libraries'), qr/\bbunce\b/,
		$node->name . ': bunce preloaded')
	  or die 'setup: ' . $node->name . ' does not preload bunce';
}
ok(wait_sql($node_b, 'SELECT state FROM bunce.status', 'standby'), 'node_b: bunce.status says standby')
  or die 'setup: bunce is not in standby state on node_b';
is(sql_value($node_b, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker'"),
	'0', 'node_b: no bunce worker');

# ---- helpers for the two switches -------------------------------------------------------------

sub enqueue_backlog
{
	my ($node, $first) = @_;
	my $last = $first + $N - 1;
	$node->safe_psql('postgres',
		"SELECT count(bunce_trigger('$EVENT_ID', jsonb_build_object('email', 'f' || g || '\@example.com', "
		  . "'n', g))) FROM generate_series($first, $last) g");
	return [ $first .. $last ];
}

# Waits until the stand-in has received nothing new for $quiet seconds; returns the count.
sub settled_received
{
	my ($quiet) = @_;
	my ($last, $since) = (-1, time());
	wait_for('the stand-in to settle', sub {
		my $r = $bunce->stats->{received};
		($last, $since) = ($r, time()) if $r != $last;
		return time() - $since >= $quiet;
	}, timeout => 20, interval_ms => 200);
	return $last;
}

# The primary must wait for the standby at commit (pg_auto_failover: replication quorum).
sub check_sync
{
	my ($primary, $standby, $what) = @_;
	ok( wait_sql($primary,
			"SELECT current_setting('synchronous_standby_names') <> '' AND "
			  . "(SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')) = 1"),
		"$what: commits on " . $primary->name . ' wait for ' . $standby->name)
	  or note('synchronous_standby_names: ' . sql_value($primary, 'SHOW synchronous_standby_names'));
	return;
}

# The standby-to-be promotes with delivery off, so that what its worker marks at start-up can
# be looked at before it sends anything (ALTER SYSTEM works on a standby).
sub pause_delivery
{
	my ($node) = @_;
	$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = off');
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	return;
}

# After the switch: the new primary is up with delivery off. Checks what it marked, turns
# delivery on, and checks that every committed event arrived, duplicates only where marked.
sub check_switch
{
	my ($what, $new, $want, $delivered_before) = @_;
	ok(wait_sql($new, 'SELECT state FROM bunce.status', 'disabled'),
		"$what: " . $new->name . ' promoted, its worker up, delivery off');
	my $received = settled_received(2);
	my $resent = sql_value($new, 'SELECT possibly_duplicated FROM bunce.status');
	my %marked = map { $_ => 1 } split /\n/,
	  $new->safe_psql('postgres', 'SELECT idempotency_key FROM bunce.outbox WHERE possible_duplicate');
	my %pending = map { $_ => 1 } split /\n/,
	  $new->safe_psql('postgres', 'SELECT idempotency_key FROM bunce.outbox');
	note("$what: $delivered_before delivered before the switch, $received requests received, "
		  . scalar(keys %pending) . " pending on the new primary, $resent marked possible_duplicate");
	is(scalar keys %marked, $resent,
		"$what: the rows marked possible_duplicate are those bunce.status.possibly_duplicated counts");
	cmp_ok($resent, '<=', $MAX_IN_FLIGHT, "$what: at most max_in_flight ($MAX_IN_FLIGHT) of them");
	is($new->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox WHERE sending_since IS NOT NULL'),
		'0', "$what: no claim left behind");
	my @unmarked = grep { $pending{$_} && !$marked{$_} }
	  map { $_->{headers}{'idempotency-key'} } @{ $bunce->requests };
	is_deeply(\@unmarked, [],
		"$what: every pending event that was already sent is marked possible_duplicate");

	$new->safe_psql('postgres', 'ALTER SYSTEM RESET bunce.enabled');
	$new->safe_psql('postgres', 'SELECT pg_reload_conf()');
	my $t = time();
	ok(wait_sql($new, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
		"$what: the new primary drained the outbox")
	  or show_state($new, $bunce, $what);
	note(sprintf("$what: drained %.1f s after delivery was turned on", time() - $t));

	my $by_n = accepted_by_n($bunce);
	my @got = grep { $_ >= $want->[0] && $_ <= $want->[-1] } keys %$by_n;
	is_deeply([ sort { $a <=> $b } @got ], $want, "$what: all $N committed events delivered, none lost");
	my @twice = grep { @{ $by_n->{$_} } > 1 } @got;
	note("$what: " . scalar(@twice) . ' events accepted twice');
	my @dup_unmarked = grep { !$marked{ $by_n->{$_}[0] } } @twice;
	is_deeply(\@dup_unmarked, [], "$what: every event sent twice had been marked possible_duplicate");
	is(scalar(grep { @{ $by_n->{$_} } > 2 } @got), 0, "$what: no event accepted three times");
	my @keys_differ = grep { my %k = map { $_ => 1 } @{ $by_n->{$_} }; keys %k > 1 } @got;
	is(scalar @keys_differ, 0, "$what: a re-sent event carried its original Idempotency-Key");
	cmp_ok(sql_value($new, 'SELECT delivered FROM bunce.status'), '>', 0,
		"$what: the new primary's worker delivered the rest");
	is($new->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', "$what: no dead letters");
	return;
}

# The old primary is a standby again: no worker, state standby, and the stand-in hears nothing
# while it rejoins and for a few seconds after (the new primary has nothing to send).
sub check_old_primary
{
	my ($what, $old, $received_before) = @_;
	ok(wait_sql($old, 'SELECT pg_is_in_recovery()', 't'), "$what: " . $old->name . ' is in recovery');
	is(sql_value($old, 'SELECT state FROM bunce.status'), 'standby', "$what: its bunce.status says standby");
	is(sql_value($old, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker'"),
		'0', "$what: no bunce worker runs on it");
	is(settled_received(3), $received_before, "$what: the stand-in received nothing from it");
	return;
}

# A last batch on the new primary: exactly these, each once (a stale worker on the old primary
# would add its own copies of the outbox it had).
sub check_after
{
	my ($what, $primary, $first) = @_;
	my $since = $bunce->stats->{received};
	my $seq = @{ $bunce->requests } ? $bunce->requests->[-1]{seq} : 0;
	$primary->safe_psql('postgres', enqueue_sql([ $first .. $first + 9 ], tag => 'after'));
	ok(wait_sql($primary, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 30),
		"$what: 10 more events delivered");
	is(settled_received(1), $since + 10, "$what: exactly 10 requests");
	is_deeply(sorted_uniq(@{ payload_ns($bunce->requests($seq)) }), [ $first .. $first + 9 ],
		"$what: the 10 new events, once each");
	return;
}

# ---- a. pg_autoctl perform failover -----------------------------------------------------------

check_sync($node_a, $node_b, 'perform failover');
$bunce->script([], @SLOW);
pause_delivery($node_b);
my $want = enqueue_backlog($node_a, 1);
ok(wait_for('50 delivered', sub { $bunce->stats->{delivered} >= 50 }, interval_ms => 20),
	'perform failover: delivery under way on node_a');
my $delivered_before = $bunce->stats->{delivered};
$t0 = time();
ok(autoctl('perform', 'failover', '--pgdata', $monitor->data_dir), 'pg_autoctl perform failover');
ok(wait_formation($monitor, 'node_a:secondary/secondary node_b:primary/primary'),
	'perform failover: node_b primary, node_a secondary');
note(sprintf('perform failover: %.1f s until node_b primary and node_a secondary', time() - $t0));
check_switch('perform failover', $node_b, $want, $delivered_before);
check_old_primary('perform failover', $node_a, $bunce->stats->{received});
check_after('perform failover', $node_b, 501);

# ---- b. the primary killed --------------------------------------------------------------------

check_sync($node_b, $node_a, 'kill');
$bunce->reset;
$bunce->script([], @SLOW);
pause_delivery($node_a);
$want = enqueue_backlog($node_b, 1001);
ok(wait_for('50 delivered', sub { $bunce->stats->{delivered} >= 50 }, interval_ms => 20),
	'kill: delivery under way on node_b');
$delivered_before = $bunce->stats->{delivered};
# SIGKILL of the postmaster alone is a crash pg_autoctl repairs in place (it restarts Postgres:
# crash recovery, no failover; 040_crash.pl covers that). For a failover the whole node goes:
# its pg_autoctl (the process group, the postmaster with it) and the postmaster, at once.
my $b_pgdata = $node_b->data_dir;
my $b_pm = postmaster_pid($b_pgdata);
my $b_worker = worker_pid($node_b);
my $b_group = $service{$b_pgdata}{pid};
$t0 = time();
ok(kill('KILL', -$b_group, $b_pm), "kill: SIGKILL to node_b's pg_autoctl ($b_group) and postmaster ($b_pm)");
ok(reap($b_pgdata), "kill: node_b's pg_autoctl is gone");
ok(wait_for('node_b down', sub { !alive($b_pm) && !alive($b_worker) }, timeout => 20),
	"kill: node_b's postmaster and bunce worker ($b_worker) are gone");
ok(wait_sql($node_a, 'SELECT pg_is_in_recovery()', 'f', timeout => 90),
	'kill: the monitor promoted node_a')
  or note('formation: ' . formation($monitor));
note(sprintf('kill: node_a read-write %.1f s after the kill', time() - $t0));
check_switch('kill', $node_a, $want, $delivered_before);

# The old primary comes back: pg_autoctl rejoins it as a standby (crash recovery and pg_rewind,
# never read-write).
my $received = $bunce->stats->{received};
$t0 = time();
autoctl_run($node_b);
ok(wait_formation($monitor, 'node_a:primary/primary node_b:secondary/secondary', 90),
	'kill: node_b back as secondary, node_a primary');
note(sprintf('kill: node_b secondary %.1f s after its pg_autoctl started again', time() - $t0));
check_old_primary('kill', $node_b, $received);
check_after('kill', $node_a, 1501);

# ---- stop -------------------------------------------------------------------------------------

for my $node ($node_b, $node_a, $monitor)
{
	stop_service($node->data_dir);
	ok(!alive(postmaster_pid($node->data_dir)), $node->name . ' stopped');
}
note(sprintf('095: %.1f s in all', time() - $t_start));
$bunce->stop;
done_testing();
