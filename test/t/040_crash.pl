# Crashes mid-drain: the worker killed with SIGKILL (crash recovery restarts the server
# processes) and the whole server stopped in immediate mode. Nothing committed is lost, and
# only what was in flight is sent twice, marked possible_duplicate and counted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $N            = 300;
my $MAX_IN_FLIGHT = 16;
my $DELAY_MS     = 150;    # every answer is late, so that requests are in flight

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('crash', $bunce, conf => <<"EOC");
restart_after_crash = on
bunce.rate_limit = 0
bunce.max_in_flight = $MAX_IN_FLIGHT
bunce.request_timeout = '5s'
EOC

sub enqueue_backlog
{
	my ($first) = @_;
	my $last = $first + $N - 1;
	$node->safe_psql('postgres',
		"SELECT count(bunce_trigger('$EVENT_ID', jsonb_build_object('email', 'c' || g || '\@example.com', "
		  . "'n', g))) FROM generate_series($first, $last) g");
	return [ $first .. $last ];
}

sub in_flight_line
{
	my ($offset) = @_;
	my ($line) = grep { /were in flight when delivery stopped/ && !/statement:/ }
	  split /\n/, log_since($node, $offset);
	return ($line // '') =~ /(\d+) events were in flight/ ? $1 : 0;
}

# ---- SIGKILL of the worker ------------------------------------------------------------------

$bunce->script([], every => { nth => 1, delay_ms => $DELAY_MS });
my $want = enqueue_backlog(1);
ok(wait_for('60 delivered', sub { $bunce->stats->{delivered} >= 60 }, interval_ms => 20),
	'kill: delivery under way');
my $pid = worker_pid($node);
my $before = $bunce->stats;
my $claimed = sql_value($node, 'SELECT count(*) FROM bunce.outbox WHERE sending_since IS NOT NULL');
note("kill: worker pid $pid, stand-in had $before->{delivered} delivered, $claimed rows claimed");
my $log_off = log_offset($node);
ok(kill('KILL', $pid), "kill: SIGKILL sent to the worker ($pid)");
ok( wait_for('crash recovery', sub { $node->log_contains('all server processes terminated; reinitializing', $log_off) }),
	'kill: the postmaster went through crash recovery');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
	'kill: the outbox drained after the restart')
  or show_state($node, $bunce, 'after kill');
my $new_pid = worker_pid($node);
isnt($new_pid, $pid, "kill: a new worker ($new_pid) did the rest");

my $by_n = accepted_by_n($bunce);
is_deeply([ sort { $a <=> $b } keys %$by_n ], $want, "kill: all $N committed events delivered, none lost");
my @twice = grep { @{ $by_n->{$_} } > 1 } keys %$by_n;
my @thrice = grep { @{ $by_n->{$_} } > 2 } keys %$by_n;
my $resent = in_flight_line($log_off);
my $stats = $bunce->stats;
note("kill: $resent rows re-sent as possible duplicates, stand-in duplicates $stats->{duplicates}");
cmp_ok($resent, '<=', $MAX_IN_FLIGHT, "kill: at most max_in_flight ($MAX_IN_FLIGHT) rows were left claimed");
is($stats->{duplicates}, scalar @twice, 'kill: stand-in duplicates are the events accepted twice');
cmp_ok(scalar @twice, '<=', $resent, 'kill: only events left in flight were sent again');
is(scalar @thrice, 0, 'kill: no event accepted three times');
my @keys_differ = grep { my %k = map { $_ => 1 } @{ $by_n->{$_} }; keys %k > 1 } keys %$by_n;
is(scalar @keys_differ, 0, 'kill: a re-sent event carried its original Idempotency-Key');
is($stats->{unique_idempotency_keys}, $N, "kill: $N distinct keys");
is($node->safe_psql('postgres', 'SELECT possibly_duplicated FROM bunce.status'), $resent,
	'kill: bunce.status counts the possible duplicates of this start');
is($node->safe_psql('postgres', "SELECT count(*) FROM bunce.deliveries"), $N,
	"kill: bunce.deliveries has one row per event");
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', 'kill: no dead letters');

# ---- immediate shutdown of the whole server --------------------------------------------------

$bunce->reset;
$bunce->script([], every => { nth => 1, delay_ms => $DELAY_MS });
$want = enqueue_backlog(1001);
ok(wait_for('60 delivered', sub { $bunce->stats->{delivered} >= 60 }, interval_ms => 20),
	'immediate: delivery under way');
# Restart with delivery off, to look at what the new worker marked before it sends anything.
$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->stop('immediate');
# What the dead worker had written may still be on its way into the stand-in: settle first.
my $received_at_stop = -1;
wait_for('the stand-in to settle', sub {
	my $r = $bunce->stats->{received};
	my $settled = $r == $received_at_stop;
	$received_at_stop = $r;
	return $settled;
}, interval_ms => 300, timeout => 10);
note("immediate: stopped with $received_at_stop requests received");
$log_off = log_offset($node);
$node->start;
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'disabled'), 'immediate: restarted, delivery off');

$resent = in_flight_line($log_off);
my %dup_keys = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT idempotency_key FROM bunce.outbox WHERE possible_duplicate');
my %pending = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT idempotency_key FROM bunce.outbox');
note('immediate: ' . scalar(keys %pending) . " pending, $resent marked possible_duplicate");
is(scalar keys %dup_keys, $resent, 'immediate: the rows marked possible_duplicate are the ones the log counts');
cmp_ok($resent, '<=', $MAX_IN_FLIGHT, 'immediate: at most max_in_flight of them');
is( $node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox WHERE sending_since IS NOT NULL'),
	'0', 'immediate: nothing left claimed');
is($node->safe_psql('postgres', 'SELECT possibly_duplicated FROM bunce.status'), $resent,
	'immediate: bunce.status counts them');
# Whatever reached the stand-in and is still pending must be among the marked rows.
my @unmarked = grep { $pending{$_} && !$dup_keys{$_} }
  map { $_->{headers}{'idempotency-key'} } @{ $bunce->requests };
is_deeply(\@unmarked, [], 'immediate: every pending event that was already sent is marked possible_duplicate');
is($bunce->stats->{received}, $received_at_stop, 'immediate: nothing sent while delivery is off');

$node->append_conf('postgresql.conf', "bunce.enabled = on\n");
$node->reload;
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
	'immediate: the outbox drained once delivery is on')
  or show_state($node, $bunce, 'after immediate');
$by_n = accepted_by_n($bunce);
is_deeply([ sort { $a <=> $b } keys %$by_n ], $want, "immediate: all $N committed events delivered, none lost");
@twice = grep { @{ $by_n->{$_} } > 1 } keys %$by_n;
$stats = $bunce->stats;
note("immediate: stand-in duplicates $stats->{duplicates}");
is($stats->{duplicates}, scalar @twice, 'immediate: stand-in duplicates are the events accepted twice');
my @dup_unmarked = grep { !$dup_keys{ $by_n->{$_}[0] } } @twice;
is_deeply(\@dup_unmarked, [], 'immediate: every event sent twice had been marked possible_duplicate');
is(scalar(grep { @{ $by_n->{$_} } > 2 } keys %$by_n), 0, 'immediate: no event accepted three times');
is($stats->{unique_idempotency_keys}, $N, "immediate: $N distinct keys");
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.deliveries'), 2 * $N,
	'bunce.deliveries: one row per event over both runs');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', 'immediate: no dead letters');

$node->stop;
$bunce->stop;
done_testing();
