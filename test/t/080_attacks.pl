# Attack: privilege escalation through the worker. The worker runs as the bootstrap
# superuser in bunce.database; that database is owned by a non-superuser, mallory, who plants
# functions, operators, an aggregate and a type where unpinned name lookup would find them,
# and sets database-level settings that would subvert or stop the worker (search_path,
# statement_timeout, lock_timeout, default_transaction_read_only, role,
# idle_in_transaction_session_timeout). Every statement of the worker is then exercised:
# delivery, dead letter, retry, 401 pause and resume, 429 pause, pruning of bunce.deliveries
# and start-up recovery after a crash. None of mallory's code may run, she must stay a
# non-superuser, and delivery must go on.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

# The test's own sessions must not trip mallory's traps (they connect as the same bootstrap
# superuser as the worker): they pin what her database settings would change. Connection
# options take precedence over ALTER DATABASE ... SET; the worker has no such options.
my $SAFE_OPTIONS = '-c search_path=pg_catalog,pg_temp -c statement_timeout=0 -c lock_timeout=0 '
  . '-c default_transaction_read_only=off -c idle_in_transaction_session_timeout=0 -c role=none';
$ENV{PGOPTIONS} = $SAFE_OPTIONS;

my $key  = 'sk_test_standin';
my $key2 = 'sk_test_secret_7c1d9e2a44b0';

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = PostgreSQL::Test::Cluster->new('hijack');
$node->init;
$node->start;
$node->safe_psql('postgres', "CREATE ROLE mallory LOGIN;\nCREATE DATABASE shop OWNER mallory;\n");
$node->stop;
my $url = $bunce->url;
$node->append_conf('postgresql.conf', <<"EOC");
shared_preload_libraries = 'bunce'
bunce.database = 'shop'
bunce.api_url = '$url'
bunce.api_key = '$key'
bunce.request_timeout = '30s'
bunce.rate_limit = 0
bunce.max_in_flight = 1
restart_after_crash = on
EOC
$node->start;
$node->safe_psql('shop', 'CREATE EXTENSION bunce');
$node->reload;

sub shop { return $node->safe_psql('shop', $_[0]); }

sub shop_value
{
	my ($out, $err) = ('', '');
	$node->psql('shop', $_[0], stdout => \$out, stderr => \$err);
	return $out;
}

sub as_mallory
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql, extra_params => [ '-U', 'mallory' ]);
}

sub shop_wait { my ($sql, $want, %o) = @_; return wait_sql($node, $sql, $want, db => 'shop', %o); }

sub wpid
{
	return shop_value("SELECT pid FROM pg_stat_activity WHERE backend_type = 'bunce worker'");
}

# show_state for database shop (BunceTest's reads database postgres).
sub show_shop
{
	my ($what) = @_;
	note("---- state ($what)");
	note('bunce.status: ' . shop_value('SELECT row_to_json(s) FROM bunce.status s'));
	note('outbox: ' . shop_value(
		"SELECT coalesce(json_agg(json_build_object('id', id, 'n', payload->'n', 'attempts', attempts, "
		  . "'claimed', sending_since IS NOT NULL, 'last_status', last_status, 'last_error', last_error)), '[]') "
		  . "FROM bunce.outbox"));
	note('dead letters: ' . shop_value(
		"SELECT coalesce(json_agg(json_build_object('id', id, 'n', payload->'n', 'reason', reason, "
		  . "'status', http_status)), '[]') FROM bunce.dead_letters"));
	note('planted code that ran: ' . planted_ran());
	my @log = grep { /bunce|ERROR|FATAL|PANIC|terminated/ && !/statement: / } split /\n/,
	  log_since($node, 0);
	@log = @log[ -25 .. -1 ] if @log > 25;
	note("log: $_") for @log;
	my $s = eval { $bunce->stats };
	note('stand-in stats: ' . ($s ? JSON::PP->new->canonical->encode($s) : "unavailable: $@"));
	return;
}

sub planted_ran
{
	return shop_value(
		"SELECT count(*) || ': ' || coalesce(string_agg(DISTINCT what || ' as ' || who || ' in ' || "
		  . "coalesce(backend, '?'), '; '), '-') FROM evil.log");
}

sub mallory_is_superuser
{
	return shop_value("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'");
}

ok(shop_wait('SELECT state FROM bunce.status', 'running', timeout => 20),
	'the worker runs in database shop (owned by mallory)')
  or show_shop('start');

# ---- mallory's traps ---------------------------------------------------------------------------
# Each planted function logs who ran it (and where) into evil.log, and tries to make mallory a
# superuser, which works only when a superuser runs it. Each returns what the real one would,
# so that a worker that picks it up goes on working: the escalation is silent.
my $trap_body = sub {
	my ($label, $expr) = @_;
	return "LANGUAGE plpgsql SET search_path = pg_catalog AS \$f\$ BEGIN "
	  . "PERFORM evil.pwn('$label'); RETURN $expr; END \$f\$";
};
my @plant = (
	'SET search_path = pg_catalog;',
	'CREATE SCHEMA evil;',
	'CREATE TABLE evil.log (at timestamptz DEFAULT clock_timestamp(), who text, backend text, what text);',
	<<'EOSQL',
CREATE FUNCTION evil.pwn(what text) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
BEGIN
  INSERT INTO evil.log (who, backend, what)
  SELECT current_user, (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()), what;
  BEGIN
    EXECUTE 'ALTER ROLE mallory SUPERUSER';
  EXCEPTION WHEN OTHERS THEN NULL;  -- not a superuser running this: never mind
  END;
END
$f$;
EOSQL
);
# Operators the worker's SQL uses, planted with the exact argument types.
my @ops = (
	[ 'evil',   '+',  'integer',     'integer' ],
	[ 'evil',   '-',  'integer',     'integer' ],
	[ 'evil',   '=',  'integer',     'integer' ],
	[ 'evil',   '=',  'bigint',      'bigint' ],
	[ 'evil',   '<=', 'timestamptz', 'timestamptz' ],
	[ 'evil',   '<',  'timestamptz', 'timestamptz' ],
	[ 'evil',   '>',  'timestamptz', 'timestamptz' ],
	[ 'evil',   '+',  'timestamptz', 'interval' ],
	[ 'evil',   '-',  'timestamptz', 'interval' ],
	# in public: an exact match beats pg_catalog's float8 * interval whatever the path order
	[ 'public', '*',  'bigint',      'interval' ],
	[ 'public', '=',  'uuid',        'uuid' ],
);
my $i = 0;
for my $op (@ops)
{
	my ($nsp, $sym, $l, $r) = @$op;
	$i++;
	my $real = $sym eq '*' ? "a::float8 OPERATOR(pg_catalog.*) b" : "a OPERATOR(pg_catalog.$sym) b";
	my $ret = $sym =~ /^(=|<|>|<=)$/ ? 'boolean' : $sym eq '*' ? 'interval' : $l;
	push @plant,
	  "CREATE FUNCTION $nsp.op$i(a $l, b $r) RETURNS $ret "
	  . $trap_body->("$nsp.$sym($l,$r)", $real) . ";\n"
	  . "CREATE OPERATOR $nsp.$sym (LEFTARG = $l, RIGHTARG = $r, FUNCTION = $nsp.op$i);";
}
push @plant,
  "CREATE FUNCTION evil.now() RETURNS timestamptz " . $trap_body->('now()', 'pg_catalog.now()') . ';',
  "CREATE FUNCTION evil.statement_timestamp() RETURNS timestamptz "
  . $trap_body->('statement_timestamp()', 'pg_catalog.statement_timestamp()') . ';',
  "CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz "
  . $trap_body->('clock_timestamp()', 'pg_catalog.clock_timestamp()') . ';',
  "CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid "
  . $trap_body->('gen_random_uuid()', 'pg_catalog.gen_random_uuid()') . ';',
  "CREATE FUNCTION evil.nextval(regclass) RETURNS bigint "
  . $trap_body->('nextval(regclass)', 'pg_catalog.nextval($1)') . ';';
for my $t ('bigint', 'integer', 'text')
{
	push @plant,
	  "CREATE FUNCTION evil.unnest(a $t\[]) RETURNS SETOF $t LANGUAGE plpgsql SET search_path = pg_catalog "
	  . "AS \$f\$ BEGIN PERFORM evil.pwn('unnest($t\[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END \$f\$;";
}
push @plant,
  "CREATE FUNCTION evil.unnest(a anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql SET search_path = pg_catalog "
  . "AS \$f\$ BEGIN PERFORM evil.pwn('unnest(anyarray)'); RETURN QUERY SELECT pg_catalog.unnest(a); END \$f\$;",
  "CREATE FUNCTION evil.count_step(s bigint) RETURNS bigint "
  . $trap_body->('count(*)', 's OPERATOR(pg_catalog.+) 1') . ';',
  "CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_step, STYPE = bigint, INITCOND = '0');",
  # A type named text: every ::text cast in unpinned SQL becomes this domain, whose check runs.
  "CREATE FUNCTION evil.text_ok(v pg_catalog.text) RETURNS boolean " . $trap_body->('domain evil.text', 'true') . ';',
  'CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.text_ok(VALUE));';
as_mallory(join("\n", @plant) . "\n");

# The traps are live: mallory's own session with her search_path runs them (as herself,
# which changes nothing). Then her log is emptied: from now on any row is the worker's doing.
as_mallory("SET search_path = evil, public, pg_catalog;\nSELECT 1 + 1, now(), count(*) FROM pg_class;\n");
like(shop_value('SELECT string_agg(DISTINCT what, \',\') FROM evil.log WHERE who = \'mallory\''),
	qr/\+\(integer,integer\).*now\(\)|now\(\).*\+\(integer,integer\)/,
	'sanity: with mallory\'s search_path, her operators and functions are picked up');
is(mallory_is_superuser(), 'f', 'sanity: mallory is not a superuser');
shop('TRUNCATE evil.log');

# ---- phase 1: search_path = evil, public, pg_catalog for the whole database -------------------

as_mallory('ALTER DATABASE shop SET search_path = evil, public, pg_catalog');
{
	local $ENV{PGOPTIONS} = '-c role=none';
	is( $node->safe_psql('shop', 'SHOW search_path', extra_params => [ '-U', 'mallory' ]),
		'evil, public, pg_catalog', 'sanity: a new session in shop gets mallory\'s search_path');
}

# A new worker session, which the database settings apply to.
sub restart_worker
{
	my ($what) = @_;
	my $old = wpid();
	shop("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'bunce worker'");
	my $new = wait_for("a new worker ($what)", sub { my $p = wpid(); return ($p ne '' && $p ne $old) ? $p : 0; },
		timeout => 20);
	ok($new, "$what: the worker was restarted (old pid $old, new " . ($new || 'none') . ')');
	return $new;
}

restart_worker('phase 1');
ok(shop_wait('SELECT state FROM bunce.status', 'running', timeout => 15),
	'phase 1: the new worker runs') or show_shop('phase 1 start');

sub enqueue_shop
{
	my ($ns, $tag) = @_;
	return shop("BEGIN;\n" . enqueue_sql($ns, tag => $tag) . "COMMIT;\n");
}

sub ns_with_status
{
	my ($status) = @_;
	return [ sort { $a <=> $b } map { $_->{json}{payload}{n} }
		  @{ requests_where($bunce, sub { ($_[0]{status} // 0) == $status }) } ];
}

# delivery (claim, delivered + delivery log)
enqueue_shop([ 1, 2, 3 ], 'p1');
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0'), 'phase 1: three events delivered')
  or show_shop('delivery');

# dead letter
$bunce->script([ { status => 422 } ]);
enqueue_shop([4], 'p1');
ok( shop_wait(
		"SELECT count(*) FROM bunce.dead_letters WHERE reason = 'rejected' AND http_status = 422 "
		  . "AND (payload->>'n')::int = 4", '1'),
	'phase 1: the 422 made a dead letter') or show_shop('dead letter');

# retry: 503, then 200 (the retry statement, the next-due query, the waiting-retry count)
$bunce->script([ { status => 503 } ]);
enqueue_shop([5], 'p1');
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0'), 'phase 1: the 503 was retried and delivered')
  or show_shop('retry');

# 401: pause, then a new key and a reload
$bunce->config(api_key => $key2);
enqueue_shop([6], 'p1');
ok( shop_wait("SELECT state = 'paused' AND paused_reason ~ 'API key' FROM bunce.status", 't'),
	'phase 1: a refused key pauses delivery') or show_shop('401');
$node->append_conf('postgresql.conf', "bunce.api_key = '$key2'\n");
$node->reload;
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0'), 'phase 1: after the reload with the right key, delivered')
  or show_shop('401 resume');

# 429 with Retry-After: 1
$bunce->script([ { status => 429, retry_after => 1 } ]);
enqueue_shop([7], 'p1');
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0'), 'phase 1: the 429 paused, then delivered')
  or show_shop('429');

# pruning and start-up recovery: a claim left behind by a crash, and delivery log rows older
# than the retention, both handled by the first round of the worker started after it.
$node->append_conf('postgresql.conf', "bunce.delivery_log_retention = '1s'\n");
$node->reload;
shop_wait("SELECT current_setting('bunce.delivery_log_retention')", '1s');
my $logged = shop('SELECT count(*) FROM bunce.deliveries');
cmp_ok($logged, '>=', 5, "phase 1: bunce.deliveries holds the delivered events ($logged)");
$bunce->script([ { hang => 1 } ]);
enqueue_shop([8], 'p1');
ok(wait_for('the request hangs', sub { $bunce->stats->{hung} >= 1 }), 'phase 1: a request hangs')
  or show_shop('hang');
ok(shop_wait('SELECT count(*) FROM bunce.outbox WHERE sending_since IS NOT NULL', '1'),
	'phase 1: its row is claimed');
my $log_off = log_offset($node);
my $pid = wpid();
ok(kill('KILL', $pid), "phase 1: SIGKILL to the worker ($pid) while its request hangs");
ok(wait_for('crash recovery', sub { $node->log_contains('all server processes terminated; reinitializing', $log_off) }),
	'phase 1: the postmaster went through crash recovery');
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0', timeout => 40),
	'phase 1: after the restart the claimed event was sent again and delivered')
  or show_shop('recovery');
ok(shop_wait('SELECT possibly_duplicated FROM bunce.status', '1'),
	'phase 1: it was counted as a possible duplicate (the recovery statement ran)');
ok( shop_wait("SELECT count(*) FROM bunce.deliveries WHERE delivered_at < now() - interval '3 seconds'", '0',
		timeout => 20),
	'phase 1: the worker pruned bunce.deliveries') or show_shop('prune');

is_deeply(ns_with_status(200), [ 1, 2, 3, 5, 6, 7, 8 ], 'phase 1: each deliverable event was accepted')
  or show_shop('phase 1 deliveries');
is(mallory_is_superuser(), 'f', 'phase 1: mallory is still not a superuser');
is(planted_ran(), '0: -', 'phase 1: none of mallory\'s planted code ran');
ok(shop_wait('SELECT state FROM bunce.status', 'running'), 'phase 1: the worker is running');

# Whatever happened, phase 2 starts clean.
shop("ALTER ROLE mallory NOSUPERUSER;\nTRUNCATE evil.log;\n");

# ---- phase 2: settings that would stop or subvert the worker ---------------------------------

as_mallory(<<'EOSQL');
ALTER DATABASE shop SET statement_timeout = '1ms';
ALTER DATABASE shop SET lock_timeout = '1ms';
ALTER DATABASE shop SET default_transaction_read_only = on;
ALTER DATABASE shop SET idle_in_transaction_session_timeout = '1ms';
ALTER DATABASE shop SET role = mallory;
EOSQL
{
	# Only the statement timeout pinned, so that this very query is not cancelled.
	local $ENV{PGOPTIONS} = '-c statement_timeout=0';
	is( $node->safe_psql('shop',
			"SELECT current_user || ',' || current_setting('default_transaction_read_only')"),
		'mallory,on',
		'sanity: a superuser\'s new session in shop becomes mallory, read-only');
}
like(shop("SELECT array_to_string(setconfig, ' ') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
		  . "WHERE d.datname = 'shop' AND s.setrole = 0"),
	qr/statement_timeout=1ms.*lock_timeout=1ms.*idle_in_transaction_session_timeout=1ms/,
	'sanity: mallory\'s timeouts are set on the database');

restart_worker('phase 2');
ok(shop_wait('SELECT state FROM bunce.status', 'running', timeout => 15),
	'phase 2: the new worker runs') or show_shop('phase 2 start');

$bunce->reset;
$bunce->config(api_key => $key2);
$bunce->script([ { status => 422 }, { status => 503 } ]);
enqueue_shop([ 11, 12, 13 ], 'p2');
ok(shop_wait('SELECT count(*) FROM bunce.outbox', '0', timeout => 20),
	'phase 2: the outbox drained under mallory\'s settings') or show_shop('phase 2 drain');
ok( shop_wait(
		"SELECT count(*) FROM bunce.dead_letters WHERE reason = 'rejected' AND (payload->>'n')::int = 11", '1'),
	'phase 2: the 422 made a dead letter');
is_deeply(ns_with_status(200), [ 12, 13 ], 'phase 2: the others were delivered (12 after a 503)');
is(mallory_is_superuser(), 'f', 'phase 2: mallory is still not a superuser');
is(planted_ran(), '0: -', 'phase 2: none of mallory\'s planted code ran');
ok(shop_wait('SELECT state FROM bunce.status', 'running'), 'phase 2: the worker is running');
my $crashes = grep { /terminated by signal (?!9\b)\d+/ } split /\n/, log_since($node, 0);
is($crashes, 0, 'no server process crashed (other than the SIGKILL the test sent)');

$node->stop;
$bunce->stop;
done_testing();
