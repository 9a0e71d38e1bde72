# The event catalog: the worker syncs bunce.events from GET /v1/events (every page), when
# bunce.refresh_events() asks and every bunce.catalog_refresh; a failed sync keeps the last
# good catalog and shows in bunce.status; refresh_events() waits for the worker, and says
# clearly when it cannot.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('catalog', $bunce, conf => "bunce.rate_limit = 0\n");

# $n events; the i-th has a required numeric and an optional timestamp parameter.
sub catalog
{
	my ($n, %rename) = @_;
	return [
		map {
			my $id = sprintf('00000000-0000-4000-8000-%012d', $_);
			{
				id          => $id,
				name        => $rename{$_} // "event $_",
				description => "the event number $_",
				parameters  => [
					{ name => 'amount', type => 'Numeric', required => JSON::PP::true },
					{ name => 'at', type => 'timestamp', required => JSON::PP::false }
				]
			}
		} 1 .. $n
	];
}

sub try_sql
{
	my ($sql, %opt) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err, on_error_stop => 1,
		extra_params => [ '-v', 'VERBOSITY=verbose', @{ $opt{params} // [] } ]);
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return { rc => $rc, out => $out, err => $err, state => $state // '' };
}

sub catalog_requests { return $bunce->stats->{catalog_requests}; }

is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.events'), '0', 'the catalog starts empty');

# ---- every page, when asked --------------------------------------------------------------------
$bunce->config(catalog => catalog(45), catalog_page_size => 20);
my $before = catalog_requests();
my $r = try_sql('SELECT bunce.refresh_events()');
is($r->{out}, '45', 'refresh_events() returns the number of events') or note($r->{err});
is(catalog_requests() - $before, 3, 'three pages of 20 were asked for');
is( $node->safe_psql('postgres',
		"SELECT count(*) || ',' || count(DISTINCT id) || ',' || bool_and(synced_at > now() - interval '1 minute')::text "
		  . "FROM bunce.events"),
	'45,45,true', 'bunce.events holds every event of every page, just synced');
is( $node->safe_psql('postgres',
		"SELECT name || '|' || description || '|' || (parameters -> 0 ->> 'type') || '|' "
		  . "|| (parameters -> 0 ->> 'required') FROM bunce.events "
		  . "WHERE id = '00000000-0000-4000-8000-000000000021'"),
	'event 21|the event number 21|Numeric|true', 'an event of the second page, parameters as Bunce wrote them');
is( $node->safe_psql('postgres',
		'SELECT catalog_events || \',\' || (catalog_synced_at IS NOT NULL) || \',\' || (catalog_error IS NULL) '
		  . 'FROM bunce.status'),
	'45,true,true', 'bunce.status shows the sync');
is($node->safe_psql('postgres', 'SELECT in_flight FROM bunce.status'), '0',
	'and no request in flight once the last page was answered');

# ---- a catalog that changed: events gone, renamed ----------------------------------------------
$bunce->config(catalog => catalog(40, 7 => 'order paid'));
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{out}, '40', 'after a change, the new number') or note($r->{err});
is( $node->safe_psql('postgres',
		"SELECT count(*) || ',' || count(*) FILTER (WHERE name = 'order paid') || ',' "
		  . "|| count(*) FILTER (WHERE name = 'event 41') FROM bunce.events"),
	'40,1,0', 'the events Bunce no longer has are gone, the renamed one is renamed');

# ---- a failed sync keeps the last good catalog --------------------------------------------------
my $synced = $node->safe_psql('postgres', 'SELECT catalog_synced_at FROM bunce.status');
$bunce->config(catalog_status => 503);
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{state}, '08006', 'a failed sync: refresh_events() fails with SQLSTATE 08006') or note($r->{err});
like($r->{err}, qr/GET \/events answered HTTP 503/, 'naming what Bunce answered');
like($r->{err}, qr/HINT:/, 'with a hint');
unlike($r->{err}, qr/sk_test_standin/, 'never the key');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.events'), '40', 'the catalog is kept');
is( $node->safe_psql('postgres',
		"SELECT (catalog_error LIKE '%503%') || ',' || (catalog_synced_at = '$synced') || ',' || catalog_events "
		  . 'FROM bunce.status'),
	'true,true,40', 'bunce.status shows the failure, and the last good sync');

$bunce->config(catalog_status => 200);    # a 200 without the events
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{state}, '08006', 'an answer without a "data" array is a failed sync') or note($r->{err});
like($r->{err}, qr/no "data" array/, 'saying what is wrong with it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.events'), '40', 'the catalog is kept again');

# What PostgreSQL could not store, or nests too deep, is a failed sync, not a worker that fails.
$bunce->config(catalog_status => undef);
my $pid = $node->safe_psql('postgres', 'SELECT pid FROM bunce.status');
for my $bad ([ 'a NUL character', [ { id => '00000000-0000-4000-8000-000000000001', name => "a\x{0}b" } ],
		qr/NUL character/ ],
	[ 'deep nesting', [ { id => '00000000-0000-4000-8000-000000000001', name => 'deep',
		parameters => [ { name => 'p', type => 'text', x => [ [ [ [ [ [ [ [ [ [1] ] ] ] ] ] ] ] ] ] } ] } ],
		qr/nested deeper/ ],
	[ 'a name of 2000 bytes', [ { id => '00000000-0000-4000-8000-000000000001', name => 'n' x 2000 } ],
		qr/name of more than 1000 bytes/ ])
{
	my ($what, $catalog, $msg) = @$bad;
	$bunce->config(catalog => $catalog);
	$r = try_sql('SELECT bunce.refresh_events()');
	is($r->{state}, '08006', "a catalog with $what: a failed sync") or note($r->{err});
	like($r->{err}, $msg, 'saying what is wrong');
}
is($node->safe_psql('postgres', 'SELECT pid FROM bunce.status'), $pid, 'the worker never stopped');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.events'), '40', 'the catalog is kept');
$bunce->config(catalog => catalog(40, 7 => 'order paid'));
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{out}, '40', 'the next good sync works') or note($r->{err});
is($node->safe_psql('postgres', 'SELECT catalog_error IS NULL FROM bunce.status'), 't',
	'and clears the error');

# ---- on its own, every bunce.catalog_refresh ---------------------------------------------------
$before = catalog_requests();
$node->append_conf('postgresql.conf', "bunce.catalog_refresh = '1s'\n");
$node->reload;
ok(wait_for('two syncs on their own', sub { catalog_requests() - $before >= 2 * 2 }),
	'with bunce.catalog_refresh = 1s the worker syncs on its own, again and again');
$node->append_conf('postgresql.conf', "bunce.catalog_refresh = 0\n");
$node->reload;
$bunce->config(catalog => catalog(3));
$r = try_sql('SELECT bunce.refresh_events()');    # a round of the worker's loop: it has reloaded
is($r->{out}, '3', 'asked for, it still syncs') or note($r->{err});
$before = catalog_requests();
$node->safe_psql('postgres', 'SELECT pg_sleep(2.5)');    # a span of time with refresh off
is(catalog_requests() - $before, 0, 'with bunce.catalog_refresh = 0 it does not');

# ---- checks at enqueue -------------------------------------------------------------------------
# event 1: amount (numeric, required), at (timestamp); "twin" is the name of two events.
my $events = catalog(5, 4 => 'twin', 5 => 'twin');
$bunce->config(catalog => $events);
is(try_sql('SELECT bunce.refresh_events()')->{out}, '5', 'a catalog with parameters');
my $E1 = $events->[0]{id};
my $E2 = $events->[1]{id};

sub enqueue
{
	my ($event, $payload, %opt) = @_;
	return try_sql(($opt{before} // '') . "SELECT bunce_trigger('$event', '$payload'::jsonb)");
}

sub stored
{
	my ($id, $path) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(payload #>> '{$path}', '<absent>') FROM bunce.outbox WHERE id = $id "
		  . "UNION ALL SELECT '<delivered>' WHERE NOT EXISTS (SELECT FROM bunce.outbox WHERE id = $id)");
}

sub set_enabled
{
	my ($on) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.enabled = $on; SELECT pg_reload_conf()");
	wait_sql($node, 'SELECT state FROM bunce.status', $on eq 'on' ? 'running' : 'disabled')
	  or BAIL_OUT("bunce.enabled = $on not taken up");
}
set_enabled('off');    # the events stay in the outbox, to be looked at

$r = enqueue($E1, '{"email": "ada@example.com"}');
is($r->{state}, '22023', 'a required parameter missing: ERROR 22023') or note($r->{err});
like($r->{err}, qr/bunce event "event 1": parameter "amount" is required and missing/,
	'naming the event and the parameter');
like($r->{err}, qr/HINT:/, 'with a hint');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": null}');
is($r->{state}, '22023', 'null counts as missing');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": "twelve"}');
is($r->{state}, '22023', 'a numeric parameter that is not a number: ERROR 22023') or note($r->{err});
like($r->{err}, qr/parameter "amount" must be a number/, 'saying so');
unlike($r->{err}, qr/twelve|ada\@example/, 'quoting no value');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": true}');
is($r->{state}, '22023', 'nor a boolean');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": "12.50"}');
is($r->{rc}, 0, 'a numeric string is fine') or note($r->{err});
is(stored($r->{out}, 'amount'), '12.50', 'and kept as it is');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": 3, "at": "yesterday"}');
is($r->{state}, '22023', 'a timestamp parameter that is no date-time: ERROR 22023') or note($r->{err});
like($r->{err}, qr/parameter "at" is not a date-time/, 'saying so');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": 3, "at": "2024-05-01 12:30:00"}',
	before => "SET TimeZone = 'Europe/Paris';\n");
is($r->{rc}, 0, 'a date-time without an offset is accepted') or note($r->{err});
is(stored($r->{out}, 'at'), '2024-05-01T10:30:00Z', 'read in the session\'s TimeZone and normalised');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": 3, "at": "2024-05-01"}');
is(stored($r->{out}, 'at'), '2024-05-01T00:00:00Z', 'a date is its midnight UTC');
$r = enqueue($E1, '{"email": "ada@example.com", "amount": 3, "at": "10000-01-01T00:00:00Z"}');
is($r->{state}, '22023', 'a date-time Bunce\'s form cannot hold is refused');
$r = enqueue($E2, '{"email": "ada@example.com"}', before => "SET bunce.on_invalid = dead_letter;\n");
is($r->{rc}, 0, 'with bunce.on_invalid = dead_letter the call succeeds') or note($r->{err});
like($r->{err}, qr/WARNING:.*dead letter/s, 'with a warning');
is( $node->safe_psql('postgres',
		"SELECT reason || ': ' || message FROM bunce.dead_letters WHERE event_id = '$E2' ORDER BY id DESC LIMIT 1"),
	'invalid: bunce event "event 2": parameter "amount" is required and missing',
	'and the event is a dead letter saying why');
$r = enqueue('11111111-1111-4111-8111-111111111111', '{"email": "ada@example.com"}');
is($r->{rc}, 0, 'an event the catalog does not have is accepted (the catalog may be older)')
  or note($r->{err});

# The trigger checks the same.
$node->safe_psql('postgres', <<"EOSQL");
CREATE TABLE orders (id int PRIMARY KEY, email text, total numeric, paid_at timestamp);
CREATE TRIGGER paid AFTER INSERT ON orders FOR EACH ROW
  EXECUTE FUNCTION bunce_trigger('$E1', '{"email": "email", "amount": "total", "at": "paid_at"}');
EOSQL
$r = try_sql("INSERT INTO orders VALUES (1, 'ada\@example.com', NULL, now())");
is($r->{state}, '22023', 'a row trigger whose row lacks a required parameter: ERROR 22023') or note($r->{err});
like($r->{err}, qr/trigger "paid" on table "orders": bunce event "event 1": parameter "amount"/,
	'naming the trigger, the event and the parameter');
$r = try_sql("INSERT INTO orders VALUES (2, 'ada\@example.com', 9.5, '2024-05-01 12:30:00') RETURNING 1");
is($r->{rc}, 0, 'a complete row goes through') or note($r->{err});

# ---- names -------------------------------------------------------------------------------------
is($node->safe_psql('postgres', "SELECT bunce.event_id('event 1')"), $E1, 'bunce.event_id(name)');
$r = try_sql("SELECT bunce.event_id('no such event')");
is($r->{state}, '42704', 'an unknown name: 42704') or note($r->{err});
like($r->{err}, qr/refresh_events/, 'the hint says how to sync');
$r = try_sql("SELECT bunce.event_id('twin')");
is($r->{state}, '42710', 'a name two events have: 42710') or note($r->{err});

$r = try_sql(
	"CREATE TRIGGER named AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION bunce_trigger('event 1', "
	  . "'{\"email\": \"email\", \"amount\": \"total\"}')");
is($r->{rc}, 0, 'a trigger may name its event') or note($r->{err});
$node->safe_psql('postgres', 'DROP TRIGGER paid ON orders');
$r = try_sql("INSERT INTO orders VALUES (3, 'ada\@example.com', 7, NULL) RETURNING 1");
is($r->{rc}, 0, 'it fires') or note($r->{err});
is( $node->safe_psql('postgres',
		"SELECT event_id FROM bunce.outbox WHERE payload ->> 'amount' = '7' ORDER BY id DESC LIMIT 1"),
	$E1, 'with the event id of that name');
for my $case ([ 'no such event', '42704', qr/bunce event "no such event" is not in the catalog/ ],
	[ 'twin', '42710', qr/more than one bunce event is named "twin"/ ])
{
	my ($name, $state, $msg) = @$case;
	$r = try_sql("CREATE TRIGGER bad AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION bunce_trigger('$name')");
	is($r->{state}, $state, "CREATE TRIGGER naming \"$name\": $state") or note($r->{err});
	like($r->{err}, qr/trigger "bad" on table "orders": /, 'naming the trigger and the table');
	like($r->{err}, $msg, 'and the event');
}
# After a sync that renamed the event, the trigger's name no longer resolves.
$events->[0]{name} = 'event one';
$bunce->config(catalog => $events);
set_enabled('on');    # the worker syncs while it delivers
is(try_sql('SELECT bunce.refresh_events()')->{out}, '5', 'synced with the event renamed');
set_enabled('off');
$r = try_sql("INSERT INTO orders VALUES (4, 'ada\@example.com', 7, NULL)");
is($r->{state}, '42704', 'the trigger that names it fails, after the sync') or note($r->{err});
like($r->{err}, qr/trigger "named" on table "orders": bunce event "event 1" is not in the catalog/,
	'naming the trigger and the event');
$r = try_sql("SET bunce.on_invalid = dead_letter;\nINSERT INTO orders VALUES (5, 'ada\@example.com', 7, NULL)");
is($r->{rc}, 0, 'with bunce.on_invalid = dead_letter the write goes through') or note($r->{err});
is( $node->safe_psql('postgres',
		"SELECT (event_id IS NULL) || ' ' || message FROM bunce.dead_letters WHERE payload ->> 'amount' = '7'"),
	'true trigger "named" on table "orders": bunce event "event 1" is not in the catalog',
	'and the event is a dead letter saying why');
# A dump restores a trigger whose event is not (yet) in the catalog: bunce.events is not dumped.
$r = try_sql("SET check_function_bodies = off;\n"
	  . "CREATE TRIGGER restored AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION bunce_trigger('not synced yet')");
is($r->{rc}, 0, 'CREATE TRIGGER naming an unknown event goes through with check_function_bodies off (a restore)')
  or note($r->{err});
$node->safe_psql('postgres', 'DROP TABLE orders');

# ---- what Bunce answers: 404 makes a dead letter that says why, and a sync ---------------------
$node->safe_psql('postgres', 'DELETE FROM bunce.outbox; DELETE FROM bunce.dead_letters');
$bunce->config(events => [ map { $_->{id} } @$events ]);    # others are 404
$node->safe_psql('postgres',
	"ALTER SYSTEM SET bunce.catalog_refresh = '1h'; ALTER SYSTEM SET bunce.enabled = on; SELECT pg_reload_conf()");
wait_sql($node, 'SELECT state FROM bunce.status', 'running');
$before = catalog_requests();
$r = enqueue('22222222-2222-4222-8222-222222222222', '{"email": "ada@example.com"}');
ok( wait_sql($node, "SELECT count(*) FROM bunce.dead_letters WHERE event_id = '22222222-2222-4222-8222-222222222222'",
		'1'),
	'an event Bunce does not have becomes a dead letter');
like( $node->safe_psql('postgres', 'SELECT message FROM bunce.dead_letters'),
	qr/the event does not exist in this Bunce account \(live and test keys see different events/,
	'which says the event does not exist in this account');
# (At most a minute after the last sync ended: whoever enqueues unknown events cannot make
# the worker sync on and on.)
ok(wait_for('a sync after the unknown event', sub { catalog_requests() > $before }, timeout => 90, interval_ms => 500),
	'and the worker synced the catalog again');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET bunce.catalog_refresh; ALTER SYSTEM RESET bunce.enabled');
$node->append_conf('postgresql.conf', "bunce.catalog_refresh = 0\n");
$node->reload;

# ---- who may, and when it cannot ---------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN; CREATE ROLE ops LOGIN IN ROLE bunce_admin');
$r = try_sql('SELECT bunce.refresh_events()', params => [ '-U', 'app' ]);
is($r->{state}, '42501', 'an ordinary role may not ask for a sync') or note($r->{err});
$r = try_sql('SELECT count(*) FROM bunce.events', params => [ '-U', 'app' ]);
is($r->{state}, '42501', 'nor read the catalog');
$r = try_sql('SELECT bunce.refresh_events()', params => [ '-U', 'ops' ]);
is($r->{out}, '5', 'bunce_admin may ask') or note($r->{err});
$r = try_sql('SELECT count(*) FROM bunce.events', params => [ '-U', 'ops' ]);
is($r->{out}, '5', 'and read it');

$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->reload;
wait_sql($node, 'SELECT state FROM bunce.status', 'disabled');
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{state}, '55000', 'delivery disabled: refresh_events() fails at once with 55000') or note($r->{err});
like($r->{err}, qr/delivery is disabled/, 'saying why');

$node->stop;
$bunce->stop;
done_testing();
