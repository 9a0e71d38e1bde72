# Failover: the outbox is replicated; a streaming standby runs no worker and sends nothing;
# promoted, it starts its worker without a restart and delivers what the primary left.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);

# The primary keeps its events: delivery is off there.
my $primary = bunce_node('primary', $bunce,
	init       => { allows_streaming => 1 },
	conf       => "bunce.enabled = off\nbunce.rate_limit = 0\n",
	wait_state => 'disabled');
$primary->safe_psql('postgres', enqueue_sql([ 1 .. 10 ], tag => 'before-backup'));

$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->append_conf('postgresql.conf', "bunce.enabled = on\n");
$standby->start;

$primary->safe_psql('postgres', enqueue_sql([ 11 .. 15 ], tag => 'streamed'));
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '15',
	'the standby has the 15 committed events (replicated outbox)');
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker'"),
	'0', 'no bunce worker runs on the standby');
is($standby->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'standby',
	'bunce.status on the standby says standby');
my ($rc, $out, $err) = $standby->psql('postgres', enqueue_sql(99));
isnt($rc, 0, 'bunce_trigger fails on the standby');
like($err, qr/read-only/, 'with a read-only error');
is($primary->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'disabled', 'the primary is not delivering');
is($bunce->stats->{received}, 0, 'the stand-in received nothing from either node');

# Failover.
my $started = $standby->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
$primary->stop;
$standby->promote;
ok(wait_sql($standby, 'SELECT pg_is_in_recovery()', 'f'), 'the standby was promoted');
ok(wait_sql($standby, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 30),
	'the promoted standby drained the outbox')
  or show_state($standby, $bunce);
is( $standby->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker'"),
	'1', 'a bunce worker runs on the promoted node');
is($standby->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'running', 'bunce.status: running');
is($standby->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the worker started on promotion, without a server restart');

my $reqs = $bunce->requests;
is(scalar @$reqs, 15, 'exactly 15 requests');
is_deeply([ sort { $a <=> $b } @{ payload_ns($reqs) } ], [ 1 .. 15 ], 'each committed event delivered once');
my $stats = $bunce->stats;
is($stats->{delivered},               15, 'stand-in: 15 delivered');
is($stats->{unique_idempotency_keys}, 15, 'stand-in: 15 distinct keys');
is($stats->{duplicates},              0,  'stand-in: no duplicates');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM bunce.deliveries'), '15',
	'bunce.deliveries on the new primary has the 15');

$standby->stop;
$bunce->stop;
done_testing();
