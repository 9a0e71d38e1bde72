# A library newer than the extension's schema: the worker waits, says what to run, and sends
# nothing, while sessions keep enqueueing; after ALTER EXTENSION bunce UPDATE it delivers all.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('upgrade', $bunce, no_extension => 1, conf => "bunce.rate_limit = 0\n");

my $newest = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'bunce'");
my $previous = $node->safe_psql('postgres',
	"SELECT version FROM pg_available_extension_versions WHERE name = 'bunce' AND version <> '$newest' "
	  . "ORDER BY string_to_array(version, '.')::int[] DESC LIMIT 1");
isnt($previous, '', "an older version than $newest is available ($previous)");

my $log_off = log_offset($node);
$node->safe_psql('postgres', "CREATE EXTENSION bunce VERSION '$previous'");
$node->safe_psql('postgres', enqueue_sql([ 1 .. 5 ], tag => 'before-update'));
ok( wait_for('the log line', sub {
		log_count($node, qr/bunce worker: waiting: extension bunce is at version \Q$previous\E here, the library is \Q$newest\E: run ALTER EXTENSION bunce UPDATE/,
			$log_off) }),
	'the worker logs that the extension needs updating');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'waiting', 'bunce.status says waiting');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '5', 'the events wait in the outbox');
is($bunce->stats->{received}, 0, 'nothing was sent');
# More commits wake the worker: still nothing, and the line is not repeated.
$node->safe_psql('postgres', enqueue_sql([ 6 .. 8 ], tag => 'before-update'));
ok(wait_sql($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker' "
		. "AND wait_event_type = 'Extension'", '1'), 'the worker waits');
is($bunce->stats->{received}, 0, 'still nothing sent');
is(log_count($node, qr/bunce worker: waiting/, $log_off), 1, 'one log line, not one per look');

$node->safe_psql('postgres', 'ALTER EXTENSION bunce UPDATE');
$node->safe_psql('postgres', enqueue_sql([9], tag => 'after-update'));  # wakes the worker
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'after the update the outbox drains')
  or show_state($node, $bunce);
is_deeply(sorted_uniq(@{ payload_ns($bunce->requests) }), [ 1 .. 9 ], 'all 9 events delivered');
is($bunce->stats->{received}, 9, 'each once');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'running', 'running');

done_testing();
