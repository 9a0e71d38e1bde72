# Behind PgBouncer in transaction pooling (README "Behind PgBouncer"): 16 clients on 4 server
# connections, each event once; SET LOCAL bunce.on_invalid stays in its transaction while a
# session SET leaks to the next client of the server connection (ALTER ROLE ... SET is the
# safe per-role default); rollbacks and a client gone mid-transaction send nothing; the generic
# trigger, and a long-lived server session seeing a trigger replaced elsewhere; statement
# pooling takes autocommit calls only.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('pooled', $bunce,
	conf => "bunce.rate_limit = 0\nmax_connections = 20\n");
$node->safe_psql('postgres', <<'EOSQL');
CREATE ROLE app LOGIN;
GRANT EXECUTE ON FUNCTION bunce_trigger(uuid, jsonb) TO app;
ALTER ROLE app SET bunce.on_invalid = dead_letter;
EOSQL
# Pool "postgres": 4 server connections. "postgres_one": one, so that consecutive clients'
# transactions provably share a server session. "postgres_stmt": statement pooling.
my $pgb = BunceTest::PgBouncer->start(
	$node,
	pool_size => 4,
	users     => ['app'],
	databases => {
		postgres_one  => 'pool_size=1 max_db_connections=1',
		postgres_stmt => 'pool_mode=statement'
	});

# An event without email or customer: refused (22023), or a dead letter.
sub invalid_sql
{
	my ($tag) = @_;
	return "SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('tag', '$tag'));\n";
}
sub dead_letters_tagged
{
	my ($tag) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM bunce.dead_letters WHERE payload->>'tag' = '$tag' AND reason = 'invalid'");
}
sub delivered_tagged
{
	my ($tag) = @_;
	return requests_where($bunce, sub { ($_[0]{json}{payload}{tag} // '') eq $tag });
}

# ---- 16 clients, 4 server connections --------------------------------------------------------

# Each client: a barrier transaction (blocks on an advisory lock the test holds, directly on the
# node), then 6 transactions of 2 events each, reporting the server backend of each.
my ($clients, $txs) = (16, 6);
my $barrier = $node->background_psql('postgres');
$barrier->query_safe('SELECT pg_advisory_lock(4242)');
# The clients read and write files: IPC::Run feeds or drains a scalar only while pumped.
my $dir = PostgreSQL::Test::Utils::tempdir('clients');
my @runs;
for my $c (0 .. $clients - 1)
{
	my $sql = "SELECT pg_advisory_xact_lock_shared(4242);\n";
	for my $t (0 .. $txs - 1)
	{
		my $n = $c * $txs * 2 + $t * 2 + 1;
		$sql .= "BEGIN;\n" . enqueue_sql([ $n, $n + 1 ], tag => 'pooled')
		  . "SELECT 'pid ' || pg_backend_pid();\nCOMMIT;\n";
	}
	PostgreSQL::Test::Utils::append_to_file("$dir/$c.sql", $sql);
	push @runs,
	  IPC::Run::start(
		[
			$pgb->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1',
			'-d', $pgb->connstr('postgres'), '-f', "$dir/$c.sql"
		],
		'<', '/dev/null', '>', "$dir/$c.out", '2>', "$dir/$c.err",
		IPC::Run::timeout(60));
}
ok( wait_for(
		'16 clients: 4 on the servers, 12 queued in pgbouncer',
		sub {
			my $p = $pgb->pool('postgres');
			return ($p->{cl_active} // 0) == 4 && ($p->{cl_waiting} // 0) == 12
			  && ($p->{sv_active} // 0) == 4;
		}),
	'16 clients at once: 4 hold the 4 server connections, 12 wait in pgbouncer')
  or note(explain($pgb->show('POOLS')));
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"),
	'4', 'and the node sees 4 backends, no more, waiting on the barrier');
$barrier->query_safe('SELECT pg_advisory_unlock(4242)');
my @rc = map { eval { $_->finish; $_->full_result(0) } // "died: $@" } @runs;
$barrier->quit;
is_deeply(\@rc, [ (0) x $clients ], 'every client ran all its transactions')
  or note(join '', map { slurp_file("$dir/$_.err") } 0 .. $clients - 1);

my %pids;
my $ids = 0;
for my $c (0 .. $clients - 1)
{
	for (split /\n/, slurp_file("$dir/$c.out"))
	{
		$pids{$1}++ if /^pid (\d+)$/;
		$ids++ if /^\d+$/;
	}
}
my $total = $clients * $txs * 2;
is($ids, $total, "bunce_trigger returned an id for each of the $total events");
cmp_ok(scalar keys %pids, '<=', 4,
	$clients * $txs . " transactions of $clients clients ran on at most 4 server backends")
  or note(explain(\%pids));
note('server backends used: ' . join(', ', map { "$_ ($pids{$_} transactions)" } sort keys %pids));
cmp_ok(scalar(grep { $_->{database} eq 'postgres' } @{ $pgb->show('SERVERS') }),
	'<=', 4, 'pgbouncer opened at most 4 server connections for the pool');

ok(wait_for("$total delivered", sub { $bunce->stats->{delivered} >= $total }),
	"the $total events were delivered")
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');
my $pooled = delivered_tagged('pooled');
is(scalar @$pooled, $total, "exactly $total requests (no retries, no extras)");
is_deeply(sorted_uniq(@{ payload_ns($pooled) }), [ 1 .. $total ], 'each event once');
is(scalar(@{ sorted_uniq(map { $_->{headers}{'idempotency-key'} } @$pooled) }),
	$total, "$total distinct idempotency keys");
is($bunce->stats->{duplicates}, 0, 'stand-in: no duplicates');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', 'no dead letters');

# ---- bunce.on_invalid: SET LOCAL, session SET, ALTER ROLE ---------------------------------------

# Pool postgres_one has one server connection: client A's and client B's transactions run on
# the same server session, one after the other.
my $client_a = $pgb->background_psql('postgres_one', on_error_stop => 0);
my $b_query = sub {
	my ($sql) = @_;
	my ($rc, $out, $err) = $pgb->psql('postgres_one', $sql);
	return { rc => $rc, out => $out, err => $err };
};
my ($out) = $client_a->query(
	"BEGIN;\nSET LOCAL bunce.on_invalid = dead_letter;\n" . invalid_sql('local-dl')
	  . "SELECT 'pid ' || pg_backend_pid();\nCOMMIT;");
like($client_a->{stderr}, qr/WARNING:.*email/s, 'A: SET LOCAL dead_letter: a WARNING, not an ERROR');
my ($a_pid) = $out =~ /^pid (\d+)$/m;
is(dead_letters_tagged('local-dl'), '1', 'A: the invalid event is a dead letter (reason invalid)');

my $r = $b_query->("SELECT pg_backend_pid() || ' ' || current_setting('bunce.on_invalid')");
is($r->{out}, "$a_pid error", 'B, next on the same server session: bunce.on_invalid is error again');
$r = $b_query->(invalid_sql('local-next'));
isnt($r->{rc}, 0, 'B: an invalid payload is refused');
like($r->{err}, qr/ERROR:.*email/s, 'B: with an ERROR (the default on_invalid = error)');
is(dead_letters_tagged('local-next'), '0', 'B: no dead letter');

# A session SET through transaction pooling stays on the server session: the next client of
# that session inherits it (PgBouncer's documented behaviour). Unsafe: README says so.
$client_a->query("SET bunce.on_invalid = dead_letter;");
$r = $b_query->("SELECT pg_backend_pid() || ' ' || current_setting('bunce.on_invalid')");
is($r->{out}, "$a_pid dead_letter", "A's session SET leaks to B through transaction pooling");
$r = $b_query->(invalid_sql('leaked'));
is($r->{rc}, 0, 'B: so its invalid payload is not refused');
is(dead_letters_tagged('leaked'), '1', "B: but kept as a dead letter, by A's setting");
$client_a->query("RESET bunce.on_invalid;");
is($b_query->("SHOW bunce.on_invalid")->{out}, 'error', "after A's RESET, B has the default again");
$client_a->quit;

# ALTER ROLE ... SET: a per-role default, and pgbouncer pools per (database, user).
my ($rc_app, $out_app, $err_app) =
  $pgb->psql('postgres', invalid_sql('role-dl'), extra_params => [ '-U', 'app' ]);
is($rc_app, 0, 'role app (ALTER ROLE app SET bunce.on_invalid = dead_letter): not refused')
  or note($err_app);
is(dead_letters_tagged('role-dl'), '1', 'role app: a dead letter');
my (undef, undef, $err_me) = $pgb->psql('postgres', invalid_sql('role-other'));
like($err_me, qr/ERROR:.*email/s, 'another role on the same database: an ERROR, as before');

# ---- rollbacks, and a client gone in mid-transaction, send nothing -----------------------------

$pgb->safe_psql('postgres', "BEGIN;\n" . enqueue_sql(2001, tag => 'rolledback') . "ROLLBACK;\n");
my (undef, undef, $err_err) = $pgb->psql('postgres',
	"BEGIN;\n" . enqueue_sql(2002, tag => 'rolledback') . "SELECT 1/0;\nCOMMIT;\n");
like($err_err, qr/division by zero/, 'a transaction failing after its enqueue');
my $gone = $pgb->background_psql('postgres');
$gone->query_safe("BEGIN;\n" . enqueue_sql(2003, tag => 'rolledback'));
$gone->quit;    # \q inside the transaction: pgbouncer closes the dirty server connection
ok( wait_sql($node,
		"SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'", '0'),
	'the server session of the client gone in mid-transaction is rolled back and closed');
$pgb->safe_psql('postgres', enqueue_sql(2004, tag => 'marker'));
ok(wait_for('marker delivered', sub { @{ delivered_tagged('marker') } == 1 }),
	'an event committed after them is delivered')
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');
is(scalar @{ delivered_tagged('rolledback') }, 0,
	'nothing rolled back (explicitly, by an error, by a disconnect) was sent');

# ---- the generic trigger ------------------------------------------------------------------------

my $order_event = '0e4c1f52-4b3b-4f59-9a6c-6f0f3b6a9a11';
my $trigger = sub {
	my ($mapping) = @_;
	return "CREATE OR REPLACE TRIGGER order_placed AFTER INSERT ON orders FOR EACH ROW "
	  . "EXECUTE FUNCTION bunce_trigger('$order_event', '$mapping');";
};
$node->safe_psql('postgres',
	"CREATE TABLE orders (id int PRIMARY KEY, email text NOT NULL, total numeric NOT NULL);\n"
	  . $trigger->('{"email": "email", "amount": "total"}'));
$pgb->safe_psql('postgres', <<'EOSQL');
BEGIN;
INSERT INTO orders VALUES (1, 'ada@example.com', 10), (2, 'bob@example.com', 20);
INSERT INTO orders VALUES (3, 'cy@example.com', 30);
COMMIT;
BEGIN;
INSERT INTO orders VALUES (4, 'dan@example.com', 40);
ROLLBACK;
EOSQL
# A long-lived server session (pool postgres_one) has the mapping cached; the trigger is
# replaced directly on the node; the same server session uses the new mapping.
my $pid1 = $pgb->safe_psql('postgres_one',
	"INSERT INTO orders VALUES (5, 'eve\@example.com', 50);\nSELECT pg_backend_pid();");
$node->safe_psql('postgres', $trigger->('{"email": "email", "amount": "total", "order_id": "id"}'));
my $pid2 = $pgb->safe_psql('postgres_one',
	"INSERT INTO orders VALUES (6, 'fay\@example.com', 60);\nSELECT pg_backend_pid();");
is($pid2, $pid1, 'both inserts through postgres_one ran on one server session');

my $orders = sub { requests_where($bunce, sub { $_[0]{json}{event_id} eq $order_event }) };
ok(wait_for('5 order events', sub { @{ $orders->() } >= 5 }), 'the 5 committed orders were delivered')
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');
my %by_email = map { $_->{json}{payload}{email} => $_->{json}{payload} } @{ $orders->() };
is(scalar @{ $orders->() }, 5, 'exactly 5 order requests (the rolled-back insert sent nothing)');
is_deeply(
	[ @by_email{qw(ada@example.com cy@example.com eve@example.com fay@example.com)} ],
	[
		{ email => 'ada@example.com', amount => 10 },
		{ email => 'cy@example.com',  amount => 30 },
		{ email => 'eve@example.com', amount => 50 },
		{ email => 'fay@example.com', amount => 60, order_id => 6 },
	],
	'mapped payloads; the server session picked up the trigger replaced elsewhere');

# ---- statement pooling: autocommit calls only -----------------------------------------------

$pgb->safe_psql('postgres_stmt', enqueue_sql(3001, tag => 'statement'));
my ($rc_st, undef, $err_st) = $pgb->psql('postgres_stmt',
	"BEGIN;\n" . enqueue_sql(3002, tag => 'statement-tx') . "COMMIT;\n");
isnt($rc_st, 0, 'statement pooling: a transaction block is refused');
like($err_st, qr/transaction blocks not allowed|long transactions not allowed/,
	'by pgbouncer') or note($err_st);
ok(wait_for('autocommit call delivered', sub { @{ delivered_tagged('statement') } == 1 }),
	'statement pooling: an autocommit bunce_trigger is delivered')
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');
is(scalar @{ delivered_tagged('statement-tx') }, 0, 'the refused transaction sent nothing');

# ---- the whole run ---------------------------------------------------------------------------

my $stats = $bunce->stats;
is($stats->{duplicates}, 0, 'stand-in: no duplicates over the whole test');
is($stats->{unique_idempotency_keys}, $stats->{delivered}, 'one idempotency key per delivery');

$pgb->stop;
$node->stop;
$bunce->stop;
done_testing();
