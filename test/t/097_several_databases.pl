# Several databases: bunce.database lists them, the launcher runs one worker per database,
# follows the list on reload (databases added, removed, created later, missing), starts a
# worker again when it stops, says so when max_worker_processes leaves no room, and the
# workers share one bunce.rate_limit in turns.
use strict;
use warnings;

use List::Util qw(max min sum);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('databases', $bunce,
	no_extension => 1,
	conf         => "bunce.database = 'shop, billing'\nbunce.rate_limit = 0\n");
for my $db (qw(shop billing crm))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION bunce');
}
$node->reload;    # the workers look for the extension now

sub value
{
	my ($db, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, $sql, stdout => \$out, stderr => \$err);
	return $out;
}

# database => pid of its worker, from pg_stat_activity
sub workers
{
	my %pids = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres',
		"SELECT datname, pid FROM pg_stat_activity WHERE backend_type = 'bunce worker'");
	return \%pids;
}

sub set_databases
{
	my ($list) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.database = '$list'");
	$node->reload;
}

sub enqueue_in
{
	my ($db, $ns, $tag) = @_;
	$node->safe_psql($db, enqueue_sql($ns, tag => $tag));
}

# The payload ns the stand-in accepted for $tag.
sub accepted_ns
{
	my ($tag) = @_;
	return [ sort { $a <=> $b } map { $_->{json}{payload}{n} }
		  @{ requests_where($bunce, sub { ($_[0]{status} // 0) == 200 && $_[0]{json}{payload}{tag} eq $tag }) } ];
}

# --------------------------------------------------------------------------------------------
# One worker per listed database, each delivering its own outbox.

ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running', db => $_), "$_: its worker runs")
  for qw(shop billing);
my $w = workers();
is(join(',', sort keys %$w), 'billing,shop', 'one worker per listed database, none for the others');
isnt($w->{shop}, $w->{billing}, 'two processes');
is(value($_, 'SELECT pid FROM bunce.status'), $w->{$_}, "$_: bunce.status shows its own worker")
  for qw(shop billing);
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce launcher'"),
	'1', 'one launcher');
is(value('crm', 'SELECT state || \': \' || paused_reason FROM bunce.status'),
	'stopped: bunce.database does not list this database', 'crm (not listed): bunce.status says why it has none');

enqueue_in('shop',    [ 1 .. 30 ], 'shop');
enqueue_in('billing', [ 1 .. 20 ], 'billing');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => $_), "$_: outbox delivered")
  for qw(shop billing);
is_deeply(accepted_ns('shop'),    [ 1 .. 30 ], 'shop: each event once');
is_deeply(accepted_ns('billing'), [ 1 .. 20 ], 'billing: each event once');
ok(wait_sql($node, 'SELECT delivered FROM bunce.status', $_->[1], db => $_->[0]),
	"$_->[0]: bunce.status counts its own $_->[1]")
  for [ 'shop', 30 ], [ 'billing', 20 ];

my ($rc, $out, $err) = $node->psql('crm', enqueue_sql(1));
like($err, qr/ERROR:  bunce does not deliver the events of database "crm"/,
	'enqueueing in a database the list leaves out is refused');
like($err, qr/DETAIL:  bunce.database is "shop, billing"/, '... naming the list');

# --------------------------------------------------------------------------------------------
# Reload: a database added, one that does not exist yet (created later), one removed.

my $log = log_offset($node);
set_databases('shop, billing, crm, later');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running', db => 'crm'), 'crm added: its worker runs');
enqueue_in('crm', [ 1 .. 10 ], 'crm');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => 'crm'), 'crm: delivered');
is_deeply(accepted_ns('crm'), [ 1 .. 10 ], 'crm: each event once');
ok(wait_for('the warning', sub { log_count($node, qr/WARNING:  bunce launcher: database "later" of bunce.database does not exist/, $log) }),
	'a database of the list that does not exist: a warning');
is(workers()->{shop}, $w->{shop}, 'the reload left the running workers alone');

$node->safe_psql('postgres', 'CREATE DATABASE later');
ok(wait_sql($node, 'SELECT count(*) FROM pg_stat_activity WHERE backend_type = \'bunce worker\' AND datname = \'later\'', '1',
		timeout => 20),
	'created later: its worker starts (it waits for the extension)');
is(log_count($node, qr/database "later" of bunce.database does not exist/, $log), 1, 'the warning was given once');

# billing leaves the list with a request in flight (answered after 4 s): its worker stops
# and the event stays in billing's outbox, not lost; back on the list, it is delivered.
$bunce->script([ { pass => JSON::PP::true, delay_ms => 4000 } ], customer => 'u99@example.com');
enqueue_in('billing', [99], 'billing');
ok(wait_sql($node, 'SELECT in_flight FROM bunce.status', '1', db => 'billing'), 'billing: one request in flight');
$log = log_offset($node);
set_databases('shop, crm, later');
ok(wait_for('billing\'s worker to stop', sub { !exists workers()->{billing} }), 'billing removed: its worker stops');
ok(log_count($node, qr/bunce launcher: stopping the worker of database "billing": bunce.database no longer lists it/, $log),
	'... and the log says why');
is(value('billing', 'SELECT count(*) FROM bunce.outbox'), '1', 'the event in flight is still in billing\'s outbox');
is(value('billing', 'SELECT state FROM bunce.status'), 'stopped', 'billing: bunce.status says stopped');
($rc, $out, $err) = $node->psql('billing', enqueue_sql(100));
like($err, qr/bunce does not deliver the events of database "billing"/, 'billing: enqueueing is refused now');
is(workers()->{shop}, $w->{shop}, 'the other workers ran on');

set_databases('shop, crm, later, billing');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => 'billing', timeout => 30),
	'billing back on the list: the event left behind is delivered');
ok(grep({ $_ == 99 } @{ accepted_ns('billing') }), '... and accepted');

# --------------------------------------------------------------------------------------------
# A worker that stops is started again; the others go on.

$w = workers();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($w->{crm})");
ok(wait_for('a new crm worker', sub { my $p = workers()->{crm}; $p && $p != $w->{crm} }),
	'crm\'s worker, terminated, is started again');
is(workers()->{shop}, $w->{shop}, 'shop\'s worker was not touched');
enqueue_in('crm', [ 11 .. 15 ], 'crm');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => 'crm'), 'crm: delivering again');

# A served database dropped (WITH (FORCE) ends its worker) and created again is served again
# without a reload; a template on the list gets no worker (it would block CREATE DATABASE).
$log = log_offset($node);
$node->safe_psql('postgres', 'DROP DATABASE billing WITH (FORCE)');
ok(wait_for('the warning', sub { log_count($node, qr/WARNING:  bunce launcher: database "billing" of bunce.database does not exist/, $log) }),
	'billing dropped: a warning');
$node->safe_psql('postgres', 'CREATE DATABASE billing');
$node->safe_psql('billing', 'CREATE EXTENSION bunce');
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running', db => 'billing', timeout => 30),
	'created again: served again, without a reload');
cmp_ok(log_count($node, qr/FATAL:  database \d+ does not exist/, $log), '<=', 1,
	'no worker was started again and again for the dropped database');
set_databases('shop, crm, later, billing, template1');
ok(wait_for('the warning', sub { log_count($node, qr/WARNING:  bunce launcher: database "template1" of bunce.database is a template/, $log) }),
	'template1 listed: a warning');
ok(!exists workers()->{template1}, '... and no worker');
$node->safe_psql('postgres', 'CREATE DATABASE made_from_template1');
pass('CREATE DATABASE still works');
set_databases('shop, crm, later, billing');

# --------------------------------------------------------------------------------------------
# A claimed event waiting for its turn was never sent: a stop gives it back as it was, not as
# a possible duplicate. (6 a minute: the second event waits 10 s for its turn.)
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.rate_limit = 6');
$node->reload;
ok(wait_sql($node, "SELECT setting FROM pg_settings WHERE name = 'bunce.rate_limit'", '6', db => 'shop'), 'rate limit 6/min');
$bunce->reset;
enqueue_in('shop', [ 301, 302 ], 'waiting-turn');
ok(wait_for('the first request', sub { @{ $bunce->requests } >= 1 }), 'the first event went out');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox WHERE sending_since IS NOT NULL', '1', db => 'shop'),
	'the second is claimed, waiting for its turn');
$node->restart(mode => 'fast');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => 'shop', timeout => 60), 'delivered after the restart');
is(value('shop', 'SELECT possibly_duplicated FROM bunce.status'), '0',
	'the stop gave it back as it was: not a possible duplicate');
is(value('shop', 'SELECT string_agg(attempts::text, \',\') FROM (SELECT attempts FROM bunce.deliveries '
		  . 'ORDER BY id DESC LIMIT 2) d'), '1,1', '... and each of the two delivered at its first attempt');

# --------------------------------------------------------------------------------------------
# One bunce.rate_limit for all: 600 a minute is a request every 100.5 ms, shared in turns.

$bunce->reset;
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = off');
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.rate_limit = 600');
$node->reload;
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'disabled', db => $_), "$_: paused") for qw(shop crm);
enqueue_in('shop', [ 101 .. 140 ], 'budget-shop');
enqueue_in('crm',  [ 101 .. 200 ], 'budget-crm');
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = on');
$node->reload;
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', db => $_, timeout => 60), "$_: delivered under the limit")
  for qw(shop crm);
my @arrivals = map { [ $_->{received_at}, $_->{json}{payload}{tag} ] } @{ $bunce->requests };
is(scalar @arrivals, 140, 'each event sent once');
my $spacing = 60.3 / 600;
my $tightest = min(map { $arrivals[ $_ + 10 ][0] - $arrivals[$_][0] } 0 .. $#arrivals - 10);
cmp_ok($tightest, '>=', 9 * $spacing - 0.02,
	'no burst: any 10 consecutive requests of the two workers span at least 9 spacings');
# While both had a backlog (until shop's last request), they took turns.
my ($last_shop) = grep { $arrivals[$_][1] eq 'budget-shop' } reverse 0 .. $#arrivals;
my $shop_share = (grep { $_->[1] eq 'budget-shop' } @arrivals[ 0 .. $last_shop ]) / ($last_shop + 1);
cmp_ok($shop_share, '>=', 0.4, 'both backlogged: shop had at least 40% of the requests');
cmp_ok($shop_share, '<=', 0.6, '... and crm as much');
# After that, crm had the whole budget: its requests came a spacing apart, not two.
my @after = map { $_->[0] } @arrivals[ $last_shop + 1 .. $#arrivals ];
my @gaps = sort { $a <=> $b } map { $after[$_] - $after[ $_ - 1 ] } 1 .. $#after;
cmp_ok($gaps[ @gaps / 2 ], '<', 1.5 * $spacing, 'crm alone: the share shop left went to crm (median gap one spacing)');

# --------------------------------------------------------------------------------------------
# No room: max_worker_processes = 3 holds the launcher and two workers (no logical
# replication launcher), not the third.

$node->append_conf('postgresql.conf', "max_worker_processes = 3\nmax_logical_replication_workers = 0\n");
$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.database = 'shop, crm, billing'");
$log = log_offset($node);
$node->restart;
ok(wait_for('two workers', sub { keys %{ workers() } == 2 }), 'two workers started');
ok(wait_for('the warning', sub { log_count($node, qr/WARNING:  bunce launcher: no background worker slot is free for the worker of database "(shop|crm|billing)"/, $log) }),
	'the third: a warning');
like(log_since($node, $log), qr/HINT:  Raise max_worker_processes/, '... with a hint');
my ($left_out) = grep { !exists workers()->{$_} } qw(shop crm billing);
is(value($left_out, 'SELECT state || \': \' || paused_reason FROM bunce.status'),
	'stopped: no background worker slot is free (max_worker_processes)', "$left_out: bunce.status says why");

$node->stop;
done_testing();
