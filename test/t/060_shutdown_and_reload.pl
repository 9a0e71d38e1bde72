# The worker's life: it waits quietly for CREATE EXTENSION; SIGTERM stops it promptly (after
# the answers in flight) and the postmaster starts it again; bunce.enabled = off pauses
# delivery while enqueueing goes on, and on drains the backlog.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('life', $bunce, no_extension => 1,
	conf => "bunce.rate_limit = 0\nbunce.request_timeout = '2s'\n");

my $problems = qr/\b(ERROR|FATAL|PANIC|WARNING):/;

# ---- no extension yet: the worker waits quietly ----------------------------------------------

ok( wait_sql($node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker' "
		  . "AND wait_event_type = 'Extension'", '1'),
	'without the extension the worker runs and waits');
my $pid = worker_pid($node);
my $log_off = 0;
# Over a few seconds (two SIGHUPs wake it for extra looks, and its own 5 s recheck comes by)
# it must neither complain nor die.
$node->reload;
my $t0 = time();
my $complained = wait_for('a complaint in the log', sub {
	$node->reload if time() - $t0 > 1 && time() - $t0 < 1.2;
	return log_count($node, $problems, $log_off) > 0 || worker_pid($node) ne $pid;
}, timeout => 6, interval_ms => 200, quiet => 1);
ok(!$complained, 'no ERROR/FATAL/WARNING and no restart over 6 s without the extension')
  or note(log_since($node, 0));
is(worker_pid($node), $pid, 'the same worker all along');
is(log_count($node, qr/bunce worker started/), 1, 'started once');
is(log_count($node, qr/bunce worker:/), 0, 'no state changes logged while waiting');

# CREATE EXTENSION: found at the next recheck (5 s), no poke.
$node->safe_psql('postgres', 'CREATE EXTENSION bunce');
my $t_created = time();
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running', timeout => 12),
	'after CREATE EXTENSION the worker starts delivering')
  or show_state($node, $bunce);
note(sprintf('found the extension %.1f s after CREATE EXTENSION', time() - $t_created));
$node->safe_psql('postgres', enqueue_sql([ 1 .. 3 ], tag => 'created'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'and delivers');
is_deeply([ sort { $a <=> $b } @{ payload_ns($bunce->requests) } ], [ 1 .. 3 ], 'the 3 events, once each');

# ---- SIGTERM: exits promptly, restarted -----------------------------------------------------

$pid = worker_pid($node);
$log_off = log_offset($node);
$t0 = time();
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', 'SIGTERM sent to the worker');
ok( wait_sql($node, "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0',
		timeout => 3, interval_ms => 20),
	'the worker exited within 3 s');
note(sprintf('idle worker exited after %.2f s', time() - $t0));
ok( wait_for('a new worker', sub { my $p = worker_pid($node); $p ne '' && $p ne $pid }, timeout => 10),
	'the postmaster started a new worker');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'), 'the new worker is running');
cmp_ok(log_count($node, qr/bunce worker stopping/, $log_off), '==', 1, 'it logged that it stopped');
is(log_count($node, $problems, $log_off), 0, 'no ERROR or FATAL from the stop');

# SIGTERM with a request in flight: the answer is awaited and recorded, no re-send.
$bunce->script([ { pass => 1, delay_ms => 800 } ]);
my $seq = $bunce->stats->{received};
my $id = $node->safe_psql('postgres', enqueue_sql(20, tag => 'in-flight'));
ok(wait_for('the request in flight', sub { $bunce->stats->{received} > $seq }),
	'a request is in flight (answer delayed 0.8 s)');
$pid = worker_pid($node);
$log_off = log_offset($node);
$t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_sql($node, "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid", '0',
		timeout => 4, interval_ms => 20),
	'the worker exited after its request in flight finished');
my $took = time() - $t0;
note(sprintf('worker with a request in flight exited after %.2f s', $took));
cmp_ok($took, '<', 3, 'within the 2 s grace period (plus slack)');
is($node->safe_psql('postgres', "SELECT attempts, http_status FROM bunce.deliveries WHERE id = $id"),
	'1|200', 'the answer that came during the stop was recorded as delivered');
ok( wait_for('a new worker', sub { my $p = worker_pid($node); $p ne '' && $p ne $pid }, timeout => 10),
	'restarted again');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'), 'running again');
is(scalar @{ requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == 20 }) }, 1,
	'the event in flight at SIGTERM was sent exactly once');
is(log_count($node, qr/were in flight when delivery stopped/, $log_off), 0,
	'nothing was left claimed by the stop');

# ---- bunce.enabled = off: enqueue goes on, nothing sent; on: drained -------------------------

$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->reload;
ok( wait_sql($node, "SELECT state, paused_reason ~ 'bunce.enabled' FROM bunce.status", 'disabled|t'),
	'enabled = off: bunce.status says disabled, and why');
$seq = $bunce->stats->{received};
my @ids = split /\n/, $node->safe_psql('postgres', enqueue_sql([ 31 .. 35 ], tag => 'disabled'));
is(scalar @ids, 5, 'enabled = off: enqueueing goes on');
my $sent = wait_for('a request while disabled', sub { $bunce->stats->{received} > $seq }, timeout => 2, quiet => 1);
ok(!$sent, 'enabled = off: nothing sent (watched 2 s after five commits)');
is($node->safe_psql('postgres', 'SELECT count(*), sum(attempts) FROM bunce.outbox'), '5|0',
	'enabled = off: the 5 events wait in the outbox, untouched');
is($node->safe_psql('postgres', 'SELECT queued FROM bunce.status'), '5', 'bunce.status: 5 queued');

$node->append_conf('postgresql.conf', "bunce.enabled = on\n");
$node->reload;
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'enabled = on: drained');
my $reqs = requests_where($bunce, sub { 1 }, $seq);
is_deeply([ sort { $a <=> $b } @{ payload_ns($reqs) } ], [ 31 .. 35 ], 'enabled = on: the 5, once each');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'running', 'running');

is(log_count($node, $problems), 0, 'no ERROR, FATAL or WARNING in the whole log')
  or note(join "\n", grep { /$problems/ } split /\n/, log_since($node, 0));
is($bunce->stats->{duplicates}, 0, 'no duplicates in the whole run');

# ---- SIGTERM in a lock wait: the worker ends at once, as any backend would -------------------
# (After the whole-log check above: this ends the worker with PostgreSQL's own FATAL line.)
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE bunce.outbox IN ACCESS EXCLUSIVE MODE');
my $stuck = worker_pid($node);
$node->reload;    # wakes the worker: its next round waits for the lock
ok( wait_sql($node,
		"SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'bunce worker'", 'Lock'),
	'the worker waits for the lock on bunce.outbox');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($stuck)");
ok( wait_for('the stuck worker to end',
		sub { !kill(0, $stuck) }, timeout => 10),
	'SIGTERM ends a worker waiting for a lock (it does not wait for the lock to go)');
$locker->query_safe('COMMIT');
$locker->quit;
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'),
	'the postmaster starts the worker again, and it runs');

$node->stop;
$bunce->stop;
done_testing();
