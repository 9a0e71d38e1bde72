# Attacks through input and DDL by the people bunce serves: bunce_admin calling an internal
# function; payloads of any size (bunce.max_payload_size); the outbox altered under live
# sessions; and a mapping or payload nested deep enough to blow a stack. Each must end in an
# ERROR with a SQLSTATE (or a dead letter), never a crash of any process.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('input', $bunce, conf => "bunce.rate_limit = 0\nrestart_after_crash = on\n");

# Runs $sql in a new session with verbose errors; returns a hash: rc, out, err and the
# SQLSTATE of the first ERROR/FATAL/PANIC ('' if none).
sub try_sql
{
	my ($sql, %opt) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($opt{db} // 'postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1,
		extra_params => $opt{extra_params} // []);
	my ($state) = $err =~ /(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):/;
	return { rc => $rc, out => $out, err => $err, state => $state // '' };
}

sub postmaster_pid
{
	my $f = $node->data_dir . '/postmaster.pid';
	return -e $f ? (split /\n/, slurp_file($f))[0] : 'none';
}

sub crashes_since
{
	my ($off) = @_;
	return scalar grep { /terminated by signal|all server processes terminated; reinitializing/ && !/statement: / }
	  split /\n/, log_since($node, $off);
}

# Requests the stand-in saw whose payload tag is $tag.
sub sent_with_tag
{
	my ($tag) = @_;
	return scalar @{ requests_where($bunce, sub { ($_[0]{json}{payload}{tag} // '') eq $tag }) };
}

my $pm_pid = postmaster_pid();

# ---- 8. bunce_admin may not call bunce.notify_enqueued ---------------------------------------

$node->safe_psql('postgres', "CREATE ROLE alice LOGIN;\nGRANT bunce_admin TO alice;\n");
my $r = try_sql('SELECT state IS NOT NULL FROM bunce.status', extra_params => [ '-U', 'alice' ]);
is($r->{out}, 't', 'sanity: alice (bunce_admin) reads bunce.status') or note($r->{err});
$r = try_sql('SELECT bunce.notify_enqueued(1000000)', extra_params => [ '-U', 'alice' ]);
is($r->{state}, '42501', 'bunce_admin cannot call bunce.notify_enqueued(bigint): permission denied (42501)')
  or note("rc $r->{rc}, out [$r->{out}], err [$r->{err}]");
$r = try_sql('SELECT has_function_privilege(\'bunce_admin\', \'bunce.notify_enqueued(bigint)\', \'EXECUTE\')');
is($r->{out}, 'f', 'no EXECUTE on bunce.notify_enqueued(bigint) for bunce_admin') or note($r->{err});

# ---- 5. bunce.max_payload_size ---------------------------------------------------------------

$r = try_sql('SHOW bunce.max_payload_size');
is($r->{out}, '256kB', 'bunce.max_payload_size exists and defaults to 256kB') or note($r->{err});

my $big = 300_000;    # characters of a text value: the payload's JSON text is over 256 kB
my $big_payload = sub {
	my ($email, $tag) = @_;
	return "jsonb_build_object('email', '$email', 'tag', '$tag', 'blob', repeat('x', $big))";
};

$r = try_sql("SELECT bunce_trigger('$EVENT_ID', " . $big_payload->('big1@example.com', 'big-fn') . ')');
is($r->{state}, '54000', 'bunce_trigger with a payload over bunce.max_payload_size: ERROR 54000')
  or note("rc $r->{rc}, out [$r->{out}], err [" . substr($r->{err}, 0, 500) . ']');
like($r->{err}, qr/HINT:/, 'the error comes with a hint');
unlike($r->{err}, qr/big1\@example\.com|xxxxxxxxxx/, 'the error quotes no customer data');

$r = try_sql("SET bunce.on_invalid = dead_letter;\nSELECT bunce_trigger('$EVENT_ID', "
	  . $big_payload->('big2@example.com', 'big-fn-dl') . ')');
is($r->{rc}, 0, 'with bunce.on_invalid = dead_letter the call succeeds')
  or note(substr($r->{err}, 0, 500));
like($r->{err}, qr/WARNING:/, 'with a WARNING');
my $dl_fn = $r->{out};
is( $node->safe_psql('postgres',
		"SELECT reason FROM bunce.dead_letters WHERE payload->>'tag' = 'big-fn-dl'"),
	'invalid', 'and the oversized event is a dead letter, reason invalid');

# The generic trigger: a row with a large text column.
$node->safe_psql('postgres', <<"EOSQL");
CREATE TABLE notes (id int PRIMARY KEY, email text NOT NULL, tag text, body text);
CREATE TRIGGER note_added AFTER INSERT ON notes FOR EACH ROW
  EXECUTE FUNCTION bunce_trigger('$EVENT_ID', '{"email": "email", "tag": "tag", "body": "body"}');
EOSQL
$r = try_sql("INSERT INTO notes VALUES (1, 'big3\@example.com', 'big-trg', repeat('y', $big))");
is($r->{state}, '54000', 'generic trigger, a row whose payload is over the limit: ERROR 54000')
  or note("rc $r->{rc}, err [" . substr($r->{err}, 0, 500) . ']');
unlike($r->{err}, qr/big3\@example\.com|yyyyyyyyyy/, 'the error quotes no customer data');
is($node->safe_psql('postgres', 'SELECT count(*) FROM notes'), '0', 'the business write was rolled back');
$r = try_sql("SET bunce.on_invalid = dead_letter;\n"
	  . "INSERT INTO notes VALUES (2, 'big4\@example.com', 'big-trg-dl', repeat('y', $big))");
is($r->{rc}, 0, 'generic trigger with bunce.on_invalid = dead_letter: the insert goes through')
  or note(substr($r->{err}, 0, 500));
like($r->{err}, qr/WARNING:/, 'with a WARNING');
is( $node->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM notes WHERE id = 2) || ',' || "
		  . "(SELECT string_agg(reason, ',') FROM bunce.dead_letters WHERE payload->>'tag' = 'big-trg-dl')"),
	'1,invalid', 'the row is there and its event is a dead letter, reason invalid');

# A row put into the outbox directly (as a superuser may) over the limit is not sent.
$node->safe_psql('postgres',
	    "INSERT INTO bunce.outbox (event_id, payload) VALUES ('$EVENT_ID', "
	  . $big_payload->('big5@example.com', 'big-direct') . ");\n"
	  . "SELECT bunce.notify_enqueued(1);\n"
	  . enqueue_sql(501, tag => 'small-direct'));
ok(wait_for('the small event', sub { sent_with_tag('small-direct') >= 1 }),
	'a small event enqueued with it is delivered');
ok( wait_sql($node, "SELECT reason FROM bunce.dead_letters WHERE payload->>'tag' = 'big-direct'", 'invalid',
		timeout => 10),
	'an oversized row inserted into bunce.outbox directly becomes a dead letter, reason invalid')
  or show_state($node, $bunce, 'big direct');

# Lowering the limit and reloading: already-queued rows over it are dead letters at claim time.
$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->reload;
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'disabled'), 'delivery disabled for a moment');
my $mid_payload = "jsonb_build_object('email', 'mid\@example.com', 'tag', 'mid', 'blob', repeat('m', 100000))";
$r = try_sql("SELECT bunce_trigger('$EVENT_ID', $mid_payload)");
is($r->{rc}, 0, 'a 100 kB payload is under the default limit: enqueued') or note(substr($r->{err}, 0, 500));
$node->safe_psql('postgres', enqueue_sql(502, tag => 'small-after-lowering'));
$node->append_conf('postgresql.conf', "bunce.max_payload_size = '64kB'\nbunce.enabled = on\n");
$node->reload;
ok(wait_sql($node, 'SELECT current_setting(\'bunce.max_payload_size\')', '64kB', timeout => 5),
	'the limit lowered to 64kB');
ok(wait_for('the small event', sub { sent_with_tag('small-after-lowering') >= 1 }),
	'after the reload the small event is delivered');
ok(wait_sql($node, "SELECT reason FROM bunce.dead_letters WHERE payload->>'tag' = 'mid'", 'invalid', timeout => 10),
	'the queued 100 kB event is now over the limit: a dead letter, reason invalid')
  or show_state($node, $bunce, 'lowered limit');
is(join(',', map { sent_with_tag($_) } qw(big-fn big-fn-dl big-trg big-trg-dl big-direct mid)),
	'0,0,0,0,0,0', 'no oversized event was sent');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');
$node->append_conf('postgresql.conf', "bunce.max_payload_size = '256kB'\n");
$node->reload;

# After something that may have crashed a backend: wait until the server accepts connections
# again (after a crash, once crash recovery is over and the crash is in the log).
sub settle
{
	return wait_sql($node, 'SELECT 1', '1', timeout => 40);
}

# ---- 2. nesting deep enough to blow a stack ---------------------------------------------------

# A session that must survive whatever the attack does to its own backend.
my $bystander = $node->background_psql('postgres', on_error_stop => 0);
is($bystander->query('SELECT 1'), '1', 'a bystander session is connected');
my $log_off = log_offset($node);

my $pdepth = 10_000;
my $deep_json = "('{\"email\": \"d\@example.com\", \"x\": ' || repeat('{\"x\": ', $pdepth) || '1' || "
  . "repeat('}', $pdepth) || '}')::jsonb";
$r = try_sql("SELECT bunce_trigger('$EVENT_ID', $deep_json)");
is($r->{state}, '54000', "bunce_trigger with a payload nested $pdepth deep: ERROR 54000")
  or note("rc $r->{rc}, out [$r->{out}], err [" . substr($r->{err}, 0, 300) . ']');
settle();
$r = try_sql("SET bunce.on_invalid = dead_letter;\nSELECT bunce_trigger('$EVENT_ID', $deep_json)");
ok($r->{state} eq '54000' || ($r->{rc} == 0 && $r->{err} =~ /WARNING:/),
	'with on_invalid = dead_letter: an ERROR 54000 or a dead letter')
  or note("rc $r->{rc}, err [" . substr($r->{err}, 0, 300) . ']');
settle();
is(crashes_since($log_off), 0, 'the deep payload crashed no process')
  or note(join "\n", grep { /terminated|reinitializ/ } split /\n/, log_since($node, $log_off));

$log_off = log_offset($node);
my $depth = 40_000;
my $mapping = ('{"a":' x $depth) . '"email"' . ('}' x $depth);
$node->safe_psql('postgres', 'CREATE TABLE deep (email text)');
$r = try_sql("CREATE TRIGGER deep AFTER INSERT ON deep FOR EACH ROW "
	  . "EXECUTE FUNCTION bunce_trigger('$EVENT_ID', '$mapping')");
my $at_create = $r->{state};
note("CREATE TRIGGER with a mapping nested $depth deep: "
	  . ($at_create ? "refused, $at_create" : ($r->{rc} == 0 ? 'accepted' : "failed: $r->{err}")));
ok(($r->{rc} == 0 && $at_create eq '') || $at_create eq '22023',
	'CREATE TRIGGER with the deep mapping: accepted or ERROR 22023')
  or note(substr($r->{err}, 0, 300));
settle();
if ($at_create eq '')
{
	$r = try_sql("INSERT INTO deep VALUES ('deep\@example.com')");
	is($r->{state}, '22023', "an INSERT firing the trigger with a mapping nested $depth deep: ERROR 22023")
	  or note("rc $r->{rc}, err [" . substr($r->{err}, 0, 300) . ']');
	settle();
}
else
{
	pass('refused at CREATE TRIGGER: nothing to fire');
}
is(crashes_since($log_off), 0, 'the deep mapping crashed no process')
  or note(join "\n", grep { /terminated|reinitializ/ } split /\n/, log_since($node, $log_off));

my ($one) = eval { $bystander->query('SELECT 1') };
is($one // 'session lost', '1', 'the bystander session was not disturbed');
eval { $bystander->quit };
is(postmaster_pid(), $pm_pid, 'the same postmaster');
$node->safe_psql('postgres', 'DROP TABLE deep');

# ---- 6. outbox DDL under a live session ------------------------------------------------------

$node->safe_psql('postgres', <<"EOSQL");
CREATE TABLE orders6 (id int PRIMARY KEY, email text NOT NULL);
CREATE TRIGGER order6 AFTER INSERT ON orders6 FOR EACH ROW
  EXECUTE FUNCTION bunce_trigger('$EVENT_ID', '{"email": "email", "n": "id", "tag": "email"}');
EOSQL
$log_off = log_offset($node);
my $sess;
sub new_session
{
	eval { $sess->quit } if $sess;
	$sess = $node->background_psql('postgres', on_error_stop => 0);
	$sess->query_safe('\set VERBOSITY verbose');
}
new_session();

# Runs $sql in session A; returns [stdout, stderr, sqlstate], or undef if the session died
# (then the server is waited for and session A opened again, for the next step).
sub in_a
{
	my ($sql) = @_;
	$sess->{stderr} = '';
	my $out = eval { $sess->query($sql) };
	my $err = $sess->{stderr};
	if (!defined $out || $err =~ /server closed the connection|connection to server was lost/)
	{
		note('session A died: ' . substr($err, 0, 300));
		settle();
		new_session();
		return undef;
	}
	my ($state) = $err =~ /(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):/;
	return [ $out, $err, $state // '' ];
}

sub enqueue_both
{
	my ($n) = @_;
	return "SELECT bunce_trigger('$EVENT_ID', jsonb_build_object('email', 'u$n\@example.com', 'n', $n, 'tag', 'ddl'));\n"
	  . 'INSERT INTO orders6 VALUES (' . ($n + 1) . ", 'u" . ($n + 1) . "\@example.com');\n";
}

my $res = in_a(enqueue_both(601));
ok($res && $res->[1] eq '', 'session A enqueued (function and trigger)') or note($res ? $res->[1] : 'session died');

$node->safe_psql('postgres', "ALTER TABLE bunce.outbox ADD COLUMN note text DEFAULT 'x'");
$res = in_a("BEGIN;\n" . enqueue_both(603)
	  . "SELECT string_agg(coalesce(note, 'NULL'), ',' ORDER BY id) FROM bunce.outbox "
	  . "WHERE payload->>'n' IN ('603', '604');\nCOMMIT;\n");
ok($res, 'after ADD COLUMN note, session A is still there');
ok($res && $res->[1] eq '', 'after ADD COLUMN note, session A enqueues again without error')
  or note($res ? $res->[1] : 'session died');
is($res ? (split /\n/, $res->[0])[-1] : 'session died', 'x,x', 'the new rows carry the column default (note = x)');
settle();
is(crashes_since($log_off), 0, 'no crash after ADD COLUMN');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15), 'they are delivered')
  or show_state($node, $bunce, 'after add column');

$log_off = log_offset($node);
$node->safe_psql('postgres', 'ALTER TABLE bunce.outbox DROP COLUMN note');
$res = in_a(enqueue_both(605));
ok($res && $res->[1] eq '', 'after DROP COLUMN note, session A enqueues again without error')
  or note($res ? $res->[1] : 'session died');
$r = try_sql(enqueue_both(607));
is($r->{rc} . $r->{state}, '0', 'and so does a new session') or note($r->{err});
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15), 'they are delivered')
  or show_state($node, $bunce, 'after drop column');
is_deeply(
	sorted_uniq(grep { defined } map { $_->{json}{payload}{n} } grep { ($_->{status} // 0) == 200 } @{ $bunce->requests }),
	[ 501, 502, 601 .. 608 ], 'every event enqueued around the DDL was delivered')
  or show_state($node, $bunce, 'ddl');
settle();
is(crashes_since($log_off), 0, 'no crash after DROP COLUMN');

$log_off = log_offset($node);
$node->safe_psql('postgres', 'ALTER TABLE bunce.outbox ALTER COLUMN attempts TYPE bigint');
$res = in_a(enqueue_both(611));
ok(defined $res, 'after a column type change, session A is still there');
ok($res && ($res->[1] eq '' || $res->[2] eq '55000'),
	'and its enqueue either works or is a clean ERROR 55000')
  or note($res ? $res->[1] : 'session died');
$r = try_sql(enqueue_both(613));
ok($r->{rc} == 0 || $r->{state} eq '55000', 'a new session: works or ERROR 55000')
  or note($r->{err});
settle();
is(crashes_since($log_off), 0, 'no crash after the column type change')
  or note(join "\n", grep { /terminated|reinitializ/ } split /\n/, log_since($node, $log_off));
eval { $sess->quit };

is(postmaster_pid(), $pm_pid, 'the same postmaster all along');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running'), 'the worker is running');

my $crashes = grep { /terminated by signal/ } split /\n/, log_since($node, 0);
is($crashes, 0, 'no "terminated by signal" in the server log');

$node->stop;
$bunce->stop;
done_testing();
