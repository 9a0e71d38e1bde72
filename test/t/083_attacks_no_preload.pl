# bunce without shared_preload_libraries: the extension can be created and events enqueued
# (the library is loaded by the session that needs it), bunce.status says "not loaded", and
# loading the library never takes a session down.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->append_conf('postgresql.conf', "bunce.database = 'postgres'\n");
$node->start;
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'sanity: nothing preloaded');

sub try_sql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1);
	return { rc => $rc, out => $out, err => $err };
}

my $r = try_sql('CREATE EXTENSION bunce');
is($r->{rc}, 0, 'CREATE EXTENSION bunce succeeds without shared_preload_libraries')
  or note($r->{err});
unlike($r->{err}, qr/FATAL|PGC_POSTMASTER/, 'no FATAL while loading the library') or note($r->{err});

$r = try_sql("SELECT bunce_trigger('$EVENT_ID', '{\"email\": \"np1\@example.com\", \"n\": 1}')");
like($r->{out}, qr/^\d+$/, 'bunce_trigger returns an outbox id') or note($r->{err});
my $id = $r->{out} =~ /^(\d+)$/ ? $1 : -1;
is(sql_value($node, "SELECT payload->>'email' FROM bunce.outbox WHERE id = $id"),
	'np1@example.com', 'the event is in bunce.outbox');

# The generic trigger, in another session (the library is loaded again there).
$node->psql('postgres', <<"EOSQL");
CREATE TABLE orders (id int PRIMARY KEY, email text NOT NULL);
CREATE TRIGGER order_placed AFTER INSERT ON orders FOR EACH ROW
  EXECUTE FUNCTION bunce_trigger('$EVENT_ID', '{"email": "email", "n": "id"}');
EOSQL
$r = try_sql("INSERT INTO orders VALUES (2, 'np2\@example.com')");
is($r->{rc}, 0, 'the generic trigger enqueues too') or note($r->{err});
is(sql_value($node, "SELECT count(*) FROM bunce.outbox WHERE payload->>'email' = 'np2\@example.com'"),
	'1', 'its event is in bunce.outbox');

$r = try_sql('SELECT state FROM bunce.status');
is($r->{out}, 'not loaded', "bunce.status says 'not loaded'") or note($r->{err});
$r = try_sql("SET bunce.on_invalid = dead_letter;\nSELECT bunce_trigger('$EVENT_ID', '{\"n\": 3}')");
is($r->{rc}, 0, 'bunce.on_invalid works in a session that loaded the library') or note($r->{err});
is(sql_value($node, "SELECT count(*) FROM bunce.dead_letters WHERE reason = 'invalid'"),
	'1', 'and the refused event is a dead letter');

my $log = log_since($node, 0);
my @fatal = grep { /FATAL|PANIC/ && !/statement: / } split /\n/, $log;
is(scalar @fatal, 0, 'no FATAL in the server log');
note("log: $_") for @fatal;
is(scalar(grep { /terminated by signal/ } split /\n/, $log), 0, 'no "terminated by signal" in the server log');

$node->stop;
done_testing();
