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

$bunce->config(catalog_status => undef);
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

# ---- who may, and when it cannot ---------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE ROLE app LOGIN; CREATE ROLE ops LOGIN IN ROLE bunce_admin');
$r = try_sql('SELECT bunce.refresh_events()', params => [ '-U', 'app' ]);
is($r->{state}, '42501', 'an ordinary role may not ask for a sync') or note($r->{err});
$r = try_sql('SELECT count(*) FROM bunce.events', params => [ '-U', 'app' ]);
is($r->{state}, '42501', 'nor read the catalog');
$r = try_sql('SELECT bunce.refresh_events()', params => [ '-U', 'ops' ]);
is($r->{out}, '3', 'bunce_admin may ask') or note($r->{err});
$r = try_sql('SELECT count(*) FROM bunce.events', params => [ '-U', 'ops' ]);
is($r->{out}, '3', 'and read it');

$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->reload;
wait_sql($node, 'SELECT state FROM bunce.status', 'disabled');
$r = try_sql('SELECT bunce.refresh_events()');
is($r->{state}, '55000', 'delivery disabled: refresh_events() fails at once with 55000') or note($r->{err});
like($r->{err}, qr/delivery is disabled/, 'saying why');

$node->stop;
$bunce->stop;
done_testing();
