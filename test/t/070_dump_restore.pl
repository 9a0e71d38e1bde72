# pg_dump / pg_restore of a database with pending events and dead letters keeps them (the
# extension registers its tables with pg_extension_config_dump), with their ids and
# idempotency keys, and the restored database goes on numbering after them.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BunceTest;
use PostgreSQL::Test::Utils;
use Test::More;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
# Delivery off: the events must stay pending to be dumped.
my $node = bunce_node('dump', $bunce, conf => "bunce.enabled = off\n", wait_state => 'disabled');

$node->safe_psql('postgres', enqueue_sql([ 1 .. 5 ]));
$node->safe_psql('postgres', q{
    SET bunce.on_invalid = dead_letter;
    SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "not-an-email"}');
    INSERT INTO bunce.dead_letters (id, event_id, payload, idempotency_key, reason, http_status,
                                    message, attempts, enqueued_at)
    VALUES (nextval('bunce.event_id_seq'), '9bb6215c-e2b1-4e51-abff-3a96ca185088',
            '{"email": "x@example.com"}', gen_random_uuid(), 'rejected', 422, 'bad parameter', 1, now());
});

my $rows = q{
    SELECT string_agg(format('%s %s %s %s', id, event_id, idempotency_key, payload), E'\n' ORDER BY id)
    FROM bunce.outbox};
my $dead = q{
    SELECT string_agg(format('%s %s %s %s %s', id, reason, http_status, message, payload), E'\n' ORDER BY id)
    FROM bunce.dead_letters};
my $outbox_before = $node->safe_psql('postgres', $rows);
my $dead_before   = $node->safe_psql('postgres', $dead);
is(scalar(split /\n/, $outbox_before), 5, 'five pending events before the dump');
is(scalar(split /\n/, $dead_before),   2, 'two dead letters before the dump');

my $dump = PostgreSQL::Test::Utils::tempdir() . '/bunce.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ],
	'pg_dump of a database with bunce');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ],
	'pg_restore into a new database');

is($node->safe_psql('restored', $rows), $outbox_before,
	'pending events restored with their ids, idempotency keys and payloads');
is($node->safe_psql('restored', $dead), $dead_before, 'dead letters restored');
my $max = $node->safe_psql('restored',
	'SELECT greatest((SELECT max(id) FROM bunce.outbox), (SELECT max(id) FROM bunce.dead_letters))');
my $next = $node->safe_psql('restored', "SELECT nextval('bunce.event_id_seq')");
cmp_ok($next, '>', $max, 'the restored database numbers new events after the restored ones');

# The worker serves bunce.database only: enqueueing in the restored copy is refused, clearly,
# instead of waiting there for ever.
my ($rc, $out, $err) = $node->psql('restored', enqueue_sql(7));
like($err, qr/bunce does not deliver the events of database "restored".*\n.*DETAIL:  bunce\.database is "postgres"/,
	'enqueueing in a database no worker serves is an error naming both');
like($err, qr/HINT:.*bunce\.database/, '... with a hint');

$node->stop;
done_testing();
