# Delivery: committed events are delivered exactly once, rolled-back ones never; the wire
# format Bunce expects; wake on commit; a row trigger on a business table.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use BunceTest;

my $bunce = BunceTest::Standin->start;
my $node  = bunce_node('delivery', $bunce, conf => "bunce.rate_limit = 0\n");

my $version = $node->safe_psql('postgres',
	"SELECT extversion FROM pg_extension WHERE extname = 'bunce'");

# ---- committed exactly once, rolled back never --------------------------------------------

# 20 committed, each in its own transaction; bunce_trigger returns the outbox id.
my @ids = split /\n/, $node->safe_psql('postgres', enqueue_sql([ 1 .. 20 ], tag => 'committed'));
is(scalar @ids, 20, 'bunce_trigger returned an id for each of 20 events');
my %id_of_n;
@id_of_n{ 1 .. 20 } = @ids;

# 5 rolled back explicitly.
$node->safe_psql('postgres',
	join '', map { "BEGIN;\n" . enqueue_sql($_, tag => 'rolledback') . "ROLLBACK;\n" } 101 .. 105);

# One rolled back by an error after the enqueue (psql turns COMMIT into ROLLBACK).
my ($rc, $out, $err) = $node->psql('postgres',
	"BEGIN;\n" . enqueue_sql(106, tag => 'rolledback') . "SELECT 1/0;\nCOMMIT;\n");
like($err, qr/division by zero/, 'transaction with an error after the enqueue failed');

# A savepoint rolled back: 21 and 23 go, 22 never.
$out = $node->safe_psql('postgres',
	    "BEGIN;\n"
	  . enqueue_sql(21, tag => 'committed')
	  . "SAVEPOINT s;\n"
	  . enqueue_sql(22, tag => 'rolledback')
	  . "ROLLBACK TO SAVEPOINT s;\n"
	  . enqueue_sql(23, tag => 'committed')
	  . "COMMIT;\n");
my @sp_ids = split /\n/, $out;
@id_of_n{ 21, 23 } = @sp_ids[ 0, 2 ];

my @committed = (1 .. 21, 23);
ok( wait_for('22 delivered', sub { $bunce->stats->{delivered} >= 22 }),
	'the 22 committed events were delivered')
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox is empty afterwards');

my $reqs = $bunce->requests;
is(scalar @$reqs, 22, 'exactly 22 requests reached the stand-in (no retries, no extras)');
is_deeply([ sort { $a <=> $b } @{ payload_ns($reqs) } ], \@committed,
	'payloads received == payloads committed, each once');
is(scalar(grep { ($_->{json}{payload}{tag} // '') ne 'committed' } @$reqs),
	0, 'no rolled-back event was sent');
my $stats = $bunce->stats;
is($stats->{delivered},               22, 'stand-in: 22 delivered');
is($stats->{duplicates},              0,  'stand-in: no duplicates');
is($stats->{unique_idempotency_keys}, 22, 'stand-in: 22 distinct idempotency keys');
is($stats->{skipped_timestamps},      0,  'stand-in: no timestamp skipped (normalised)');

# ---- wire format ----------------------------------------------------------------------------

my @bad;
for my $r (@$reqs)
{
	my $h = $r->{headers};
	my $n = $r->{json}{payload}{n} // 'none';
	push @bad, "$n: method $r->{method}" unless $r->{method} eq 'POST';
	push @bad, "$n: path $r->{path}" unless $r->{path} eq '/v1/events/trigger';
	push @bad, "$n: auth_ok false" unless $r->{auth_ok};
	push @bad, "$n: x-authorization missing" unless exists $h->{'x-authorization'};
	push @bad, "$n: content-type " . ($h->{'content-type'} // 'none')
	  unless ($h->{'content-type'} // '') eq 'application/json';
	push @bad, "$n: user-agent " . ($h->{'user-agent'} // 'none')
	  unless ($h->{'user-agent'} // '') eq "bunce/$version";
	push @bad, "$n: idempotency-key " . ($h->{'idempotency-key'} // 'none')
	  unless ($h->{'idempotency-key'} // '') =~ /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
	push @bad, "$n: status " . ($r->{status} // 'none') unless ($r->{status} // 0) == 200;
	my $j = $r->{json};
	push @bad, "$n: body is not a JSON object: $r->{body}" unless ref $j eq 'HASH';
	next unless ref $j eq 'HASH';
	push @bad, "$n: body keys " . join(',', sort keys %$j)
	  unless join(',', sort keys %$j) eq 'event_id,payload';
	push @bad, "$n: event_id $j->{event_id}" unless $j->{event_id} eq $EVENT_ID;
	my $p = $j->{payload};
	push @bad, "$n: email $p->{email}" unless $p->{email} eq "u$n\@example.com";
	push @bad, "$n: at $p->{at}" unless $p->{at} =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;
	push @bad, "$n: n is not a JSON number" unless $r->{body} =~ /"n":\s*$n\b/;
}
is_deeply(\@bad, [], 'every request has the wire format Bunce expects')
  or note(explain($reqs->[0]));

# Idempotency-Key of each request == bunce.deliveries.idempotency_key of its outbox id.
my %key_of_id = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', 'SELECT id, idempotency_key FROM bunce.deliveries');
is(scalar keys %key_of_id, 22, 'bunce.deliveries has a row per delivered event');
my @mismatch;
for my $r (@$reqs)
{
	my $n = $r->{json}{payload}{n};
	my $want = $key_of_id{ $id_of_n{$n} // 'none' } // 'none';
	push @mismatch, "$n: sent $r->{headers}{'idempotency-key'}, logged $want"
	  unless $r->{headers}{'idempotency-key'} eq $want;
}
is_deeply(\@mismatch, [], 'Idempotency-Key == bunce.deliveries.idempotency_key for each event');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM bunce.deliveries WHERE http_status = 200 AND attempts = 1 "
		  . "AND event_id = '$EVENT_ID'"),
	'22',
	'bunce.deliveries: 22 rows, status 200, one attempt each');
is($node->safe_psql('postgres', 'SELECT delivered FROM bunce.status'),
	'22', 'bunce.status counts 22 delivered');

# The worker's backend type.
like(
	$node->safe_psql('postgres',
		'SELECT backend_type FROM pg_stat_activity WHERE pid = (SELECT pid FROM bunce.status)'),
	qr/bunce/,
	'the worker shows in pg_stat_activity with a bunce backend_type');

# The key never reaches what the stand-in records (it redacts it) nor SHOW.
is($node->safe_psql('postgres', 'SHOW bunce.api_key'), '********', 'SHOW bunce.api_key is masked');

# ---- wake on commit -------------------------------------------------------------------------

# With the worker idle on its latch, a commit is delivered at once (the worker's safety-net
# poll is 10 s; the target is ~100 ms, asserted generously here).
for my $n (201 .. 203)
{
	wait_worker_idle($node) or show_state($node, $bunce, 'before wake test');
	my $seq = $bunce->stats->{received};
	my $t0 = time();
	$node->safe_psql('postgres', enqueue_sql($n, tag => 'committed'));
	my $committed_at = time();
	my $got = wait_for("event $n", sub {
		my $r = requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == $n }, $seq);
		return @$r ? $r->[0] : undef;
	}, timeout => 15, interval_ms => 10);
	# From before the commit started: an upper bound of the commit-to-request latency.
	my $latency = $got ? $got->{received_at} - $t0 : 99;
	note(sprintf('event %d: psql took %.3f s, request arrived %.3f s after it started',
			$n, $committed_at - $t0, $latency));
	cmp_ok($latency, '<', 2, "event $n committed to an idle worker arrived in < 2 s");
}

# ---- a row trigger on a business table ------------------------------------------------------

my $order_event = '0e4c1f52-4b3b-4f59-9a6c-6f0f3b6a9a11';
$node->safe_psql('postgres', <<"EOSQL");
CREATE TABLE orders (id int PRIMARY KEY, customer_email text NOT NULL, total numeric NOT NULL,
                     status text NOT NULL, paid_at timestamptz, note text);
CREATE TRIGGER order_paid AFTER UPDATE OF status ON orders
  FOR EACH ROW WHEN (NEW.status = 'paid' AND OLD.status IS DISTINCT FROM 'paid')
  EXECUTE FUNCTION bunce_trigger('$order_event',
      '{"email": "customer_email", "amount": "total", "date_purchased": "paid_at"}');
INSERT INTO orders VALUES (1, 'ada\@example.com', 120.5, 'new', NULL, NULL),
                          (2, 'bob\@example.com', 30, 'new', NULL, NULL),
                          (3, 'cy\@example.com', 7.25, 'new', NULL, NULL);
EOSQL
my $seq = $bunce->stats->{received};
$node->safe_psql('postgres', <<'EOSQL');
SET timezone = 'Europe/Paris';
UPDATE orders SET status = 'paid', paid_at = '2024-05-01 10:00:00.789+02' WHERE id = 1;
UPDATE orders SET status = 'paid', paid_at = '2024-12-31 23:59:59.999-05' WHERE id = 2;
-- no event: already paid, other columns, another status, rolled back
UPDATE orders SET status = 'paid' WHERE id = 1;
UPDATE orders SET note = 'gift' WHERE id = 2;
UPDATE orders SET status = 'shipped' WHERE id = 3;
BEGIN;
UPDATE orders SET status = 'paid', paid_at = now() WHERE id = 3;
ROLLBACK;
EOSQL
ok( wait_for('2 order events', sub {
		@{ requests_where($bunce, sub { $_[0]{json}{event_id} eq $order_event }, $seq) } >= 2 }),
	'the two paid orders were delivered')
  or show_state($node, $bunce);
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty after the orders');
my $orders = requests_where($bunce, sub { 1 }, $seq);
is(scalar @$orders, 2, 'exactly two requests for the order updates');
my %by_email = map { $_->{json}{payload}{email} => $_ } @$orders;
is_deeply(
	[ map { $_->{json}{payload} } @by_email{ 'ada@example.com', 'bob@example.com' } ],
	[
		{ email => 'ada@example.com', amount => 120.5, date_purchased => '2024-05-01T08:00:00Z' },
		{ email => 'bob@example.com', amount => 30, date_purchased => '2025-01-01T04:59:59Z' },
	],
	'mapped payloads: columns renamed, timestamps in UTC truncated, nothing else');
like($by_email{'ada@example.com'}{body} // '', qr/"amount":\s*120\.5[,}]/, 'numeric sent as a JSON number');
is(scalar(grep { $_->{status} == 200 } @$orders), 2, 'both accepted');
is($bunce->stats->{skipped_timestamps}, 0, 'no timestamp skipped');

$node->stop;
$bunce->stop;
done_testing();
