# Per-customer ordering against the stand-in, with bunce.max_in_flight = 32: for each customer,
# the events reach Bunce in the order they were lived (each after the one before it was
# answered with a 2xx), while one customer's first answer is slow and another's events get
# 503s; the other customers finish meanwhile. Then the same through a kill -9 of the worker
# mid-drain, bunce.ordering = none, and a failover mid-drain to a streaming standby.
#
# "The order lived": every enqueue takes the next number n of its customer from lived(k, n)
# in the same transaction; the row lock makes the next transaction of that customer wait for
# this one's commit, so n is the causal order.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $KEYS = 12;
my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('ordering', $bunce, init => { allows_streaming => 1 }, conf => <<"EOC");
restart_after_crash = on
max_prepared_transactions = 5
bunce.rate_limit = 0
bunce.max_in_flight = 32
bunce.request_timeout = '5s'
EOC

$node->safe_psql('postgres', <<"EOS");
CREATE TABLE lived (k int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO lived SELECT k FROM generate_series(1, $KEYS) k;
-- next(k): the customer's next number, held locked until this transaction ends
CREATE FUNCTION next_n(key int) RETURNS int LANGUAGE sql AS
  'UPDATE lived SET n = n + 1 WHERE k = key RETURNING n';
CREATE TABLE orders (k int, n int, customer_id text);
CREATE TRIGGER orders_paid AFTER INSERT ON orders FOR EACH ROW
  EXECUTE FUNCTION bunce_trigger('$EVENT_ID', '{"customer": {"customer_id": "customer_id"}, "n": "n", "k": "k"}');
EOS

# Checks each customer's requests in arrival order: n never goes back, each n is followed by
# a larger one only after its 2xx answer (retries of n come right after n), and every n of
# 1..$want{k} was accepted. Returns the number of customers checked.
sub check_order
{
	my ($what, $want, %opt) = @_;
	my $ok = 1;
	for my $k (sort { $a <=> $b } keys %$want)
	{
		my $reqs = $bunce->requests_of("c$k", $opt{since});
		my ($prev, $prev_done_at, $prev_ok) = (0, 0, 1);
		my %accepted;
		for my $r (@$reqs)
		{
			my $n = $r->{json}{payload}{n};
			my $status = $r->{status} // 0;
			if ($n != $prev)
			{
				if ($n < $prev || !$prev_ok || $r->{received_at} + 0.001 < $prev_done_at)
				{
					$ok = 0;
					diag("$what: customer c$k: event $n arrived after $prev "
						  . ($n < $prev ? 'was sent' : 'without its 2xx answer first'));
				}
				$prev = $n;
			}
			$prev_ok = $status >= 200 && $status < 300 && !$r->{fault};
			$prev_done_at = $r->{received_at} + ($r->{delay_ms} // 0) / 1000;
			$accepted{$n} = 1 if $prev_ok;
		}
		my @missing = grep { !$accepted{$_} } 1 .. $want->{$k};
		if (@missing && !$opt{allow_dead})
		{
			$ok = 0;
			diag("$what: customer c$k: not accepted: @missing");
		}
	}
	ok($ok, "$what: for each of " . scalar(keys %$want) . ' customers, Bunce got the events in the order lived');
	return;
}

sub lived { return { map { split /\|/ } split /\n/, $node->safe_psql('postgres', 'SELECT k, n FROM lived') }; }

# Enqueues $count events of customer c<k>, each in a transaction of its own, numbered as lived.
sub enqueue_for
{
	my ($k, $count) = @_;
	$node->safe_psql('postgres', join '', map {
			"BEGIN; SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('customer', jsonb_build_object('customer_id', 'c$k'), 'n', next_n($k), 'k', $k)); COMMIT;\n"
		} 1 .. $count);
}

# ---- many sessions, one slow customer, one failing customer ---------------------------------

# c1's first answer takes 1.5 s; c2 gets five 503s before its first event goes through.
$bunce->script([ { pass => 1, delay_ms => 1500 } ], customer => 'c1');
$bunce->script([ map { { status => 503 } } 1 .. 5 ], customer => 'c2');
my $script = $node->basedir . '/enqueue.sql';
open my $fh, '>', $script or die;
print $fh <<"EOS";
\\set k random(1, $KEYS)
BEGIN;
SELECT next_n(:k) AS n \\gset
SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('customer', jsonb_build_object('customer_id', 'c' || :k), 'n', :n, 'k', :k));
COMMIT;
EOS
close $fh;
# 8 sessions at once, 30 transactions each; then a COPY and an INSERT ... SELECT through the
# row trigger, their rows numbered in statement order.
$node->command_ok([ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '30', '-f', $script, 'postgres' ],
	'8 sessions enqueue 240 events at once');
$node->safe_psql('postgres', <<'EOS');
BEGIN;
CREATE TEMP TABLE batch AS
  SELECT k, n + row_number() OVER (PARTITION BY k ORDER BY g) AS n
  FROM generate_series(1, 120) g JOIN lived ON k = 1 + g % 12;
UPDATE lived l SET n = b.n FROM (SELECT k, max(n) AS n FROM batch GROUP BY k) b WHERE l.k = b.k;
INSERT INTO orders SELECT k, n, 'c' || k FROM batch ORDER BY k, n;
COMMIT;
EOS
my $want = lived();
my $total = 0;
$total += $_ for values %$want;
is($total, 360, '360 events enqueued');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 90), 'the outbox drained')
  or show_state($node, $bunce, 'drain');
check_order('many sessions', $want);
my $c2 = $bunce->requests_of('c2');
my $c2_first_ok = (grep { ($_->{status} // 0) == 200 } @$c2)[0]{received_at};
my $others_done = 0;
for my $k (grep { $_ != 2 } 1 .. $KEYS)
{
	my $last = $bunce->requests_of("c$k")->[-1]{received_at};
	$others_done = $last if $last > $others_done;
}
cmp_ok($others_done, '<', $c2_first_ok,
	'the other customers were all done before the failing one got its first event through');
is(scalar(grep { ($_->{status} // 0) == 503 } @$c2), 5, 'c2 got its five 503s, on its first event only');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', 'no dead letters');

# ---- a dead letter lets its customer move on; a redriven one is sent after what is pending ---

$bunce->reset;
$bunce->script([ { status => 422 } ], customer => 'c3');
enqueue_for(3, 3);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'c3 drained');
my $c3 = $bunce->requests_of('c3');
is_deeply([ map { $_->{status} } @$c3 ], [ 422, 200, 200 ], 'the refused first event did not hold up the next two');
my $dead_n = $node->safe_psql('postgres', "SELECT payload->>'n' FROM bunce.dead_letters");
is($dead_n, $c3->[0]{json}{payload}{n}, 'it is the dead letter');
$node->safe_psql('postgres', 'SELECT bunce.retry_dead_letters()');
ok(wait_for('the replay', sub { @{ $bunce->requests_of('c3') } == 4 }), 'the redriven dead letter is sent again');
is($bunce->requests_of('c3')->[-1]{json}{payload}{n}, $dead_n, 'after the events that were pending');

# ---- a transaction that holds ids for long: the others flow, and its events keep their place --

# A prepared transaction enqueues c4's event 1 (its ids are below everything enqueued after),
# and an idle transaction holds a transaction id. Meanwhile 300 other events are delivered;
# then "1" commits, "2" follows it: c4 gets 1, then 2.
$bunce->reset;
$node->safe_psql('postgres', 'UPDATE lived SET n = 0');
$node->safe_psql('postgres',
	"BEGIN; SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('customer', jsonb_build_object('customer_id', 'c4'), 'n', next_n(4), 'k', 4)); "
	  . "PREPARE TRANSACTION 'held';");
$node->safe_psql('postgres', "BEGIN; CREATE TABLE idle_xid (x int); PREPARE TRANSACTION 'idle';");
$node->safe_psql('postgres',
	"SELECT count(bunce_trigger('$EVENT_ID', jsonb_build_object('email', 'other' || g || '\@example.com', 'n', g))) "
	  . "FROM generate_series(1, 300) g");
ok(wait_for('300 delivered', sub { $bunce->stats->{delivered} >= 300 }),
	'held ids: the other events are delivered while a prepared transaction holds ids');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '0', 'held ids: nothing else waits');
$node->safe_psql('postgres', "COMMIT PREPARED 'held'");
$node->safe_psql('postgres',
	"SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('customer', jsonb_build_object('customer_id', 'c4'), 'n', 2, 'k', 4))");
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'held ids: both c4 events delivered');
check_order('held ids', { 4 => 2 });
$node->safe_psql('postgres', "ROLLBACK PREPARED 'idle'");

# ---- kill -9 of the worker mid-drain ---------------------------------------------------------

$bunce->reset;
$bunce->script([], every => { nth => 1, delay_ms => 40 });
$node->safe_psql('postgres', 'UPDATE lived SET n = 0');
# 1200 events, 100 per customer, one transaction: call order is the order lived.
$node->safe_psql('postgres',
	"SELECT count(bunce_trigger('$EVENT_ID', jsonb_build_object('customer', "
	  . "jsonb_build_object('customer_id', 'c' || k), 'n', next_n(k), 'k', k))) "
	  . "FROM generate_series(1, 1200) g, LATERAL (SELECT 1 + g % $KEYS AS k) k");
ok(wait_for('200 delivered', sub { $bunce->stats->{delivered} >= 200 }, interval_ms => 20),
	'kill: delivery under way');
my $log_off = log_offset($node);
ok(kill('KILL', worker_pid($node)), 'kill: SIGKILL sent to the worker');
ok( wait_for('crash recovery', sub { $node->log_contains('all server processes terminated; reinitializing', $log_off) }),
	'kill: the postmaster went through crash recovery');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 90), 'kill: the outbox drained after the restart')
  or show_state($node, $bunce, 'after kill');
check_order('kill -9 mid-drain', lived());
my $dups = $bunce->stats->{duplicates};
cmp_ok($dups, '<=', 32, "kill: at most max_in_flight events sent twice ($dups)");

# ---- an event deleted by hand: the next one of its customer gets its turn anyway --------------
# c6's first event is answered 503 with Retry-After 600 s, so it waits for its retry and its
# second is parked behind it. Deleted by hand, the first is never answered again: the worker
# gives the second its turn within its 5 s round (release_turns), not at an answer.

$bunce->reset;
$bunce->script([ { status => 503, retry_after => 600 } ], customer => 'c6');
$node->safe_psql('postgres', 'UPDATE lived SET n = 0');
enqueue_for(6, 2);
ok( wait_sql(
		$node,
		"SELECT string_agg(payload ->> 'n' || ':' || (next_attempt_at = 'infinity'), ' ' ORDER BY id) "
		  . "FROM bunce.outbox WHERE sending_since IS NULL AND attempts <= 1",
		'1:false 2:true'),
	'by hand: c6\'s first event waits for its retry, its second for its turn')
  or show_state($node, $bunce, 'c6 parked');
$node->safe_psql('postgres', "DELETE FROM bunce.outbox WHERE payload ->> 'n' = '1'");
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 20),
	'by hand: with the first deleted, the second is delivered');
is_deeply([ map { $_->{json}{payload}{n} . ':' . $_->{status} } @{ $bunce->requests_of('c6') } ],
	[ '1:503', '2:200' ], 'by hand: c6 saw its first event once (refused), then its second');

# ---- bunce.ordering = none: today's parallel sending -------------------------------------------

$bunce->reset;
$node->append_conf('postgresql.conf', "bunce.ordering = none\n");
$node->reload;
$bunce->script([ { pass => 1, delay_ms => 1000 } ], customer => 'c5');
$node->safe_psql('postgres', 'UPDATE lived SET n = 0');
enqueue_for(5, 3);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'none: drained');
my $c5 = $bunce->requests_of('c5');
cmp_ok($c5->[-1]{received_at} - $c5->[0]{received_at}, '<', 0.9,
	'none: the later events did not wait for the slow answer to the first');

# ---- failover: the promoted standby goes on in the same order ---------------------------------
# The primary delivers, c7's first answer held for 3 s (its later events parked behind it) and
# every answer after 40 ms; it stops at once mid-drain, and the promoted standby delivers the
# rest: its claims, parked events and ids are the primary's, replicated.

$bunce->reset;
$node->append_conf('postgresql.conf', "bunce.ordering = customer\n");
$node->reload;
$node->safe_psql('postgres', 'UPDATE lived SET n = 0');
$node->backup('failover');
my $standby = PostgreSQL::Test::Cluster->new('ordering_standby');
$standby->init_from_backup($node, 'failover', has_streaming => 1);
$standby->start;
$bunce->script([ { pass => 1, delay_ms => 3000 } ], customer => 'c7');
$bunce->script([], every => { nth => 1, delay_ms => 40 });
enqueue_for($_, 30) for 7 .. 9;
$node->wait_for_catchup($standby);
ok( wait_for('c7 in flight, c8 under way',
		sub { @{ $bunce->requests_of('c7') } >= 1 && @{ $bunce->requests_of('c8') } >= 5 }, interval_ms => 20),
	'failover: delivery under way on the primary, c7\'s first answer outstanding');
$node->stop('immediate');
$standby->promote;
ok(wait_sql($standby, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 90),
	'failover: the promoted standby drained the outbox')
  or show_state($standby, $bunce, 'after failover');
check_order('failover mid-drain', { 7 => 30, 8 => 30, 9 => 30 });
$standby->stop;

done_testing();
