# The library and the extension's schema out of step, and the extension dropped under the
# worker's feet. A schema older than the library knows: the worker waits, says to run ALTER
# EXTENSION bunce UPDATE, and sends nothing while sessions keep enqueueing; after the update it
# delivers everything. A schema newer than the library: it waits for a restart, and says so.
# DROP and CREATE EXTENSION while requests are in flight: their late answers touch nothing of
# the new extension's events (whose ids start over).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('upgrade', $bunce, no_extension => 1, conf => "bunce.rate_limit = 0\n");
my $waiting_sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker' "
  . "AND wait_event_type = 'Extension' AND state IS DISTINCT FROM 'active'";

my $newest = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'bunce'");
my $oldest = $node->safe_psql('postgres',
	"SELECT min(version) FROM pg_available_extension_versions WHERE name = 'bunce'");

# ---- a schema older than the library: wait for ALTER EXTENSION UPDATE -----------------------

my $log_off = log_offset($node);
$node->safe_psql('postgres', "CREATE EXTENSION bunce VERSION '$oldest'");
$node->safe_psql('postgres', enqueue_sql([ 1 .. 5 ], tag => 'before-update'));
my $update_line = qr/bunce worker: waiting: extension bunce is at version \Q$oldest\E here, the library needs [0-9.]+ or later: run ALTER EXTENSION bunce UPDATE/;
ok(wait_for('the log line', sub { log_count($node, $update_line, $log_off) }),
	"at $oldest the worker logs that the extension needs updating");
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'waiting', 'bunce.status says waiting');
like($node->safe_psql('postgres', 'SELECT paused_reason FROM bunce.status'), qr/run ALTER EXTENSION bunce UPDATE/,
	'and why');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '5', 'the events wait in the outbox');
# More commits wake the worker: still nothing sent, and the line is not repeated.
$node->safe_psql('postgres', enqueue_sql([ 6 .. 8 ], tag => 'before-update'));
ok(wait_sql($node, $waiting_sql, '1'), 'the worker waits');
is($bunce->stats->{received}, 0, 'nothing was sent');
is(log_count($node, qr/bunce worker: waiting/, $log_off), 1, 'one log line, not one per look');

$node->safe_psql('postgres', 'ALTER EXTENSION bunce UPDATE');
$node->safe_psql('postgres', enqueue_sql([9], tag => 'after-update'));  # wakes the worker
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'after the update the outbox drains')
  or show_state($node, $bunce);
is_deeply(sorted_uniq(@{ payload_ns($bunce->requests) }), [ 1 .. 9 ], 'all 9 events delivered');
is($bunce->stats->{received}, 9, 'each once');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'running', 'running');

# ---- a schema newer than the library: wait for the restart ----------------------------------

$log_off = log_offset($node);
$node->safe_psql('postgres', "UPDATE pg_extension SET extversion = '99.0' WHERE extname = 'bunce'");
$node->safe_psql('postgres', enqueue_sql([10], tag => 'newer'));
ok( wait_for('the log line', sub {
		log_count($node, qr/bunce worker: waiting: extension bunce is at version 99\.0 here, the library loaded is \Q$newest\E: restart the server/, $log_off) }),
	'a newer schema: the worker says to restart the server');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'waiting', 'and waits');
is($bunce->stats->{received}, 9, 'sending nothing');
$node->safe_psql('postgres', "UPDATE pg_extension SET extversion = '$newest' WHERE extname = 'bunce'");
$node->safe_psql('postgres', enqueue_sql([11], tag => 'newer'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'back at its version it delivers')
  or show_state($node, $bunce);
is_deeply(sorted_uniq(@{ payload_ns($bunce->requests) }), [ 1 .. 11 ], 'events 10 and 11 too');

# ---- DROP and CREATE EXTENSION with requests in flight -------------------------------------

# A fresh extension first, so that the old and the new events get the same ids (1, 65, 129: one
# session each); three requests at most, so that the new events wait while the old ones are in
# flight.
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.max_in_flight = 3');
$node->reload;
$node->safe_psql('postgres', 'BEGIN; DROP EXTENSION bunce; CREATE EXTENSION bunce; COMMIT;');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'), 'running with a fresh extension');
$bunce->reset;
$bunce->script([ map { { pass => 1, delay_ms => 1500 } } 1 .. 3 ]);
$node->safe_psql('postgres', enqueue_sql([ 21 .. 23 ], tag => 'old-extension'));
is($node->safe_psql('postgres', "SELECT string_agg(id::text, ',' ORDER BY id) FROM bunce.outbox"), '1,65,129',
	'the old events are 1, 65, 129 (a block of ids per transaction)');
ok(wait_for('3 requests in flight', sub { $bunce->stats->{received} >= 3 }), 'and in flight');
$node->safe_psql('postgres', 'BEGIN; DROP EXTENSION bunce; CREATE EXTENSION bunce; COMMIT;');
$node->safe_psql('postgres', enqueue_sql([ 31 .. 33 ], tag => 'new-extension'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'the new events leave the outbox')
  or show_state($node, $bunce);
is($node->safe_psql('postgres', "SELECT string_agg(id::text, ',' ORDER BY id) FROM bunce.deliveries"), '1,65,129',
	'the new events were 1, 65, 129 too');
my @new = grep { ($_->{json}{payload}{tag} // '') eq 'new-extension' } @{ $bunce->requests };
is_deeply(sorted_uniq(map { $_->{json}{payload}{n} } grep { ($_->{status} // 0) == 200 } @new), [ 31 .. 33 ],
	'each new event reached the stand-in and was answered 200: late answers to the old requests removed none');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'), 'the worker runs on');

done_testing();
