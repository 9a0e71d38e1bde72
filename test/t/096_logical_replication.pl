# Logical replication: under CREATE PUBLICATION ... FOR ALL TABLES, bunce's tables are
# published; a subscriber with bunce installed sends only its own events. The publisher's
# events (those copied by the initial table sync and those streamed after it) are not sent
# again by the subscriber, and the publisher's claims, deletes and dead letters, whose ids
# collide with the subscriber's own, neither touch the subscriber's events nor stop the
# subscription.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $off   = "bunce.enabled = off\nbunce.rate_limit = 0\n";
my $publisher = bunce_node('publisher', $bunce,
	init       => { allows_streaming => 'logical' },
	conf       => $off,
	wait_state => 'disabled');
my $subscriber = bunce_node('subscriber', $bunce, conf => $off, wait_state => 'disabled');

# Both enqueue: ids start at 1 on both, so every id of the subscriber is also one of the
# publisher's. One refused event each becomes a dead letter (ids collide there too).
my $refused = "SET bunce.on_invalid = dead_letter;\n"
  . "SELECT bunce_trigger('$EVENT_ID', '{\"email\": \"not-an-email\"}');\n";
$subscriber->safe_psql('postgres', enqueue_sql([ 1001 .. 1005 ], tag => 'subscriber') . $refused);
$publisher->safe_psql('postgres', enqueue_sql([ 1 .. 100 ], tag => 'before') . $refused);
my $own = $subscriber->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM bunce.outbox');
ok( $publisher->safe_psql('postgres',
		"SELECT count(*) FROM bunce.outbox WHERE id IN ($own)") == 5,
	'the subscriber\'s event ids are ids of the publisher\'s events too');

$publisher->safe_psql('postgres', 'CREATE PUBLICATION everything FOR ALL TABLES');
my $connstr = $publisher->connstr . ' dbname=postgres';
$subscriber->safe_psql('postgres', "CREATE SUBSCRIPTION everything CONNECTION '$connstr' PUBLICATION everything");
$subscriber->wait_for_subscription_sync($publisher, 'everything');
$publisher->safe_psql('postgres', enqueue_sql([ 101 .. 200 ], tag => 'streamed'));
$publisher->wait_for_catchup('everything');

is($subscriber->safe_psql('postgres', "SELECT count(*) FROM bunce.outbox WHERE payload ->> 'tag' <> 'subscriber'"),
	'0', 'the publisher\'s 200 events (table sync and streamed) are not in the subscriber\'s outbox');
is($subscriber->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '5',
	'the subscriber\'s outbox holds its own 5');
is($subscriber->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '1',
	'the subscriber\'s dead letters: its own only (the publisher\'s, same id, did not stop the subscription)');

# The publisher delivers: its claims and deletes, by ids the subscriber also has, reach the
# subscriber and change nothing there.
$publisher->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = on; SELECT pg_reload_conf()');
ok(wait_sql($publisher, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
	'the publisher delivered its 200 events')
  or show_state($publisher, $bunce);
$publisher->wait_for_catchup('everything');
is( $subscriber->safe_psql('postgres',
		"SELECT count(*) FROM bunce.outbox WHERE id IN ($own) AND sending_since IS NULL AND attempts = 0"),
	'5', 'the subscriber\'s 5 events are untouched by the publisher\'s claims and deletes of the same ids');
is($bunce->stats->{received}, 200, 'the stand-in received the publisher\'s 200 requests, nothing from the subscriber');

# The subscriber delivers its own, and only those.
$subscriber->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = on; SELECT pg_reload_conf()');
ok(wait_sql($subscriber, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
	'the subscriber delivered its own events')
  or show_state($subscriber, $bunce);
$publisher->safe_psql('postgres', enqueue_sql([ 201 .. 210 ], tag => 'after'));
ok(wait_sql($publisher, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60),
	'the publisher delivered 10 more while both workers run');
$publisher->wait_for_catchup('everything');
# (the subscriber's worker had the chance to send what replication brought)
ok(wait_sql($subscriber, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 10),
	'nothing waits in the subscriber\'s outbox');

my $reqs = $bunce->requests;
is(scalar @$reqs, 215, 'exactly 215 requests: 210 events of the publisher, 5 of the subscriber');
is_deeply([ sort { $a <=> $b } @{ payload_ns($reqs) } ], [ 1 .. 210, 1001 .. 1005 ],
	'each event delivered once, by the database that enqueued it');
is($bunce->stats->{duplicates}, 0, 'stand-in: no duplicates');

# What the trigger is: replica sessions only, and a row written in one by hand is kept.
is( $subscriber->safe_psql('postgres',
		"SELECT string_agg(tgrelid::regclass::text || ':' || tgenabled::text, ' ' ORDER BY tgrelid::regclass::text) "
		  . "FROM pg_trigger WHERE tgname = 'ignore_replicated'"),
	'bunce.dead_letters:R bunce.deliveries:R bunce.outbox:R',
	'bunce.ignore_replicated is enabled for replica sessions only, on the three tables');
$subscriber->safe_psql('postgres',
	"SET session_replication_role = replica; INSERT INTO bunce.dead_letters (id, event_id, payload, "
	  . "idempotency_key, reason, message, attempts, enqueued_at) "
	  . "VALUES (-1, '$EVENT_ID', '{}', gen_random_uuid(), 'rejected', 'by hand', 1, now())");
is($subscriber->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters WHERE id = -1'), '1',
	'a session in replica mode that is not a subscription writes as usual');

# A refused event written as a dead letter in a session with a replication origin (as a
# subscriber's own ENABLE ALWAYS trigger would, for a replicated row) is bunce's own write:
# kept, not dropped.
$subscriber->safe_psql('postgres',
	"SELECT pg_replication_origin_create('by_hand'); SELECT pg_replication_origin_session_setup('by_hand');\n"
	  . $refused);
is($subscriber->safe_psql('postgres', "SELECT count(*) FROM bunce.dead_letters WHERE message LIKE '%not a well-formed email%'"),
	'2', 'a dead letter written by bunce_trigger in a session with a replication origin is kept');

# ENABLE TRIGGER ALL (as a data-only restore with --disable-triggers runs) turns the trigger
# back to ordinary sessions: with a subscription here, the worker says so.
my $offset = log_offset($subscriber);
$subscriber->safe_psql('postgres', 'ALTER TABLE bunce.outbox ENABLE TRIGGER ALL');
ok( wait_for(
		'the warning about the trigger',
		sub { log_count($subscriber, qr/ignore_replicated is not enabled for replica sessions on 1 of them/, $offset) },
		timeout => 20),
	'the worker warns when the trigger is not enabled for replica sessions');
$subscriber->safe_psql('postgres', 'ALTER TABLE bunce.outbox ENABLE REPLICA TRIGGER ignore_replicated');

$subscriber->stop;
$publisher->stop;
$bunce->stop;
done_testing();
