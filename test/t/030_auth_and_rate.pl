# The key and the rate: a refused key pauses all delivery (no dead letters, one log line, the
# key never logged) until a reload brings a new key; 429 pauses the sender for Retry-After;
# the client-side limiter spaces requests; a reload switches bunce.api_url.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $old_key = 'sk_test_standin';
my $new_key = 'sk_test_rotated_7f3a9c1e';

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('auth', $bunce, key => $old_key,
	conf => "bunce.rate_limit = 0\nbunce.request_timeout = '1s'\n");

# ---- wrong key: 401 pauses everything -------------------------------------------------------

$bunce->config(api_key => $new_key);    # Bunce now expects another key than ours
my $log_start = log_offset($node);

$node->safe_psql('postgres',
	"BEGIN;\n" . enqueue_sql([ 1 .. 3 ], tag => 'auth') . "COMMIT;\n");
ok( wait_sql($node,
		"SELECT state = 'paused' AND paused_reason ~ 'API key' AND paused_until > now() "
		  . "FROM bunce.status", 't'),
	'401: bunce.status says paused, with the reason and until when')
  or show_state($node, $bunce);
ok(wait_for('3 answers recorded', sub {
	sql_value($node, 'SELECT count(*) FROM bunce.outbox WHERE last_status = 401') eq '3' }),
	'401: the three answers were recorded on their rows');
# Three refusals in flight together make one pause of 60 s, not a backoff doubled per answer.
my $pause_s = $node->safe_psql('postgres',
	'SELECT round(extract(epoch FROM paused_until - now())) FROM bunce.status');
ok($pause_s >= 50 && $pause_s <= 60, "401: paused for the first backoff, 60 s (left: $pause_s s)");
my $reqs = $bunce->requests;
is_deeply([ map { $_->{status} } @$reqs ], [ 401, 401, 401 ],
	'401: the three claimed events were sent once each, all refused');
ok(!(grep { $_->{auth_ok} } @$reqs), 'the stand-in saw the wrong key');

# While paused, new commits are not sent (they wake the worker: it must stay put), and a
# reload that does not change the key does not lift the pause.
my $seq = $bunce->stats->{received};
$node->append_conf('postgresql.conf', "bunce.max_in_flight = 8\n");
$node->reload;
wait_sql($node, "SELECT current_setting('bunce.max_in_flight')", '8');
$node->safe_psql('postgres', enqueue_sql([ 4, 5 ], tag => 'auth'));
my $sent = wait_for('a request while paused',
	sub { $bunce->stats->{received} > $seq }, timeout => 2, quiet => 1);
ok(!$sent, 'while paused for the key, nothing is sent (watched 2 s after a reload and two commits)');
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'paused', 'still paused');

is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0',
	'401: nothing dead-lettered');
is( $node->safe_psql('postgres',
		'SELECT count(*), sum(attempts), count(*) FILTER (WHERE sending_since IS NULL) FROM bunce.outbox'),
	'5|0|5',
	'401: the outbox still holds all 5 events, no attempt counted, none left claimed');
is( $node->safe_psql('postgres', 'SELECT last_error_status, queued FROM bunce.status'),
	'401|5', 'bunce.status: last error 401, 5 queued');
is(log_count($node, qr/Bunce rejected the API key/, $log_start), 1,
	'exactly one log line about the refused key')
  or note(log_since($node, $log_start));

# Fix: the new key in postgresql.conf (not ALTER SYSTEM: the TAP node logs every statement).
$node->append_conf('postgresql.conf', "bunce.api_key = '$new_key'\n");
$node->reload;
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'after the reload with the right key, all 5 events were delivered (no 60 s wait)')
  or show_state($node, $bunce);
is($node->safe_psql('postgres', 'SELECT state FROM bunce.status'), 'running', 'running again');
$reqs = requests_where($bunce, sub { $_[0]{status} == 200 });
is_deeply([ sort { $a <=> $b } @{ payload_ns($reqs) } ], [ 1 .. 5 ], 'each of the 5 delivered once');
ok(!(grep { !$_->{auth_ok} } @$reqs), 'with the new key');
my %k401 = map { $_->{json}{payload}{n} => $_->{headers}{'idempotency-key'} }
  grep { $_->{status} == 401 } @{ $bunce->requests };
my %k200 = map { $_->{json}{payload}{n} => $_->{headers}{'idempotency-key'} } @$reqs;
is_deeply({ map { $_ => $k200{$_} } keys %k401 }, \%k401,
	'the refused events were re-sent with their Idempotency-Key');
is( $node->safe_psql('postgres', 'SELECT string_agg(attempts::text, \',\' ORDER BY id) FROM bunce.deliveries'),
	'1,1,1,1,1', 'the refused attempts were not counted');
is(log_count($node, qr/Bunce rejected the API key/, $log_start), 1, 'still one log line about the key');

# The key never shows: log, status view, SHOW, pg_settings.
my $log = log_since($node, 0);
unlike($log, qr/\Q$old_key\E/, 'the old key never appears in the server log');
unlike($log, qr/\Q$new_key\E/, 'the new key never appears in the server log');
my $status_text = $node->safe_psql('postgres', 'SELECT row_to_json(s) FROM bunce.status s');
unlike($status_text, qr/sk_test/, 'bunce.status shows no key');
like(
	$node->safe_psql('postgres',
		"SELECT coalesce(string_agg(setting, ','), 'not listed') FROM pg_settings WHERE name = 'bunce.api_key'"),
	qr/^(\*{8}|not listed)$/,
	'pg_settings shows the mask or nothing');
is($node->safe_psql('postgres', "SELECT current_setting('bunce.api_key')"), '********',
	'current_setting() shows the mask');

# ---- 429 with Retry-After: 3 pauses the whole sender ----------------------------------------

$bunce->reset;
$bunce->config(api_key => $new_key);
$bunce->script([
	{ status => 429, retry_after => 3,
	  body => { success => JSON::PP::false, message => 'You have reached maximum request limit.' } }
]);
my $id10 = $node->safe_psql('postgres', enqueue_sql(10, tag => '429'));
ok( wait_sql($node,
		"SELECT state = 'paused' AND paused_reason ~ '429' AND paused_until > now() FROM bunce.status",
		't', timeout => 10, interval_ms => 50),
	'429: bunce.status says paused for the rate limit')
  or show_state($node, $bunce);
# More events during the pause: they must wait too.
$node->safe_psql('postgres', enqueue_sql([ 11, 12 ], tag => '429'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'429: all three delivered after the pause')
  or show_state($node, $bunce);
$reqs = $bunce->requests;
note('429: ' . join(', ', map { sprintf('%s %.3f %s', $_->{json}{payload}{n}, $_->{received_at}, $_->{status}) } @$reqs));
is($reqs->[0]{status}, 429, 'the first request got the 429');
is(scalar @$reqs, 4, 'four requests: the 429 and three deliveries');
my $pause = (@$reqs > 1) ? $reqs->[1]{received_at} - $reqs->[0]{received_at} : 0;
cmp_ok($pause, '>=', 2.9, sprintf('no request for Retry-After (3 s) after the 429 (%.3f s)', $pause));
cmp_ok($pause, '<', 6, 'and not much longer');
is_deeply([ sort { $a <=> $b } @{ payload_ns([ grep { $_->{status} == 200 } @$reqs ]) } ],
	[ 10, 11, 12 ], '429: each event delivered once');
is(scalar(@{ sorted_uniq(map { $_->{headers}{'idempotency-key'} } grep { $_->{json}{payload}{n} == 10 } @$reqs) }),
	1, '429: the same key on the re-sent request');
is( $node->safe_psql('postgres',
		"SELECT attempts FROM bunce.deliveries WHERE id = $id10"),
	'1', '429: the rate-limited attempt was not counted');

# ---- the client-side rate limit: 60 per minute = one request every ~1 s ----------------------

$bunce->reset;
$bunce->config(api_key => $new_key, rate_limit => 60, block_seconds => 60);
$node->append_conf('postgresql.conf', "bunce.rate_limit = 60\n");
$node->reload;
wait_sql($node, 'SELECT rate_limit FROM bunce.status', '60');
$node->safe_psql('postgres', "BEGIN;\n" . enqueue_sql([ 21 .. 28 ], tag => 'rate') . "COMMIT;\n");
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 25),
	'rate: 8 backlogged events delivered')
  or show_state($node, $bunce);
$reqs = $bunce->requests;
is(scalar @$reqs, 8, 'rate: 8 requests');
is(scalar(grep { $_->{status} == 200 } @$reqs), 8, 'rate: none refused');
my @gaps = map { $reqs->[$_]{received_at} - $reqs->[ $_ - 1 ]{received_at} } 1 .. $#$reqs;
note('rate: gaps ' . join(' ', map { sprintf '%.3f', $_ } @gaps));
my @short = grep { $_ < 0.95 } @gaps;
is(scalar @short, 0, 'rate: requests spaced at least ~0.95 s apart (60 per minute)');
my $stats = $bunce->stats;
is($stats->{rate_limit_violations}, 0, 'rate: the stand-in saw no rate-limit violation');
cmp_ok($stats->{max_in_any_60s_window}, '<=', 60, 'rate: at most 60 in any 60 s window');
cmp_ok($node->safe_psql('postgres', 'SELECT requests_last_minute FROM bunce.status'), '>=', 8,
	'bunce.status counts the requests of the last minute');

# ---- a reload switches bunce.api_url ----------------------------------------------------------

my $bunce2 = BunceTest::Standin->start(rate_limit => 0, api_key => $new_key);
$seq = $bunce->stats->{received};
$node->append_conf('postgresql.conf',
	"bunce.rate_limit = 0\nbunce.api_url = '" . $bunce2->url . "'\n");
$node->reload;
wait_sql($node, "SELECT current_setting('bunce.api_url')", $bunce2->url);
$node->safe_psql('postgres', enqueue_sql([ 31, 32 ], tag => 'url'));
ok(wait_for('2 delivered to the second stand-in', sub { $bunce2->stats->{delivered} == 2 }),
	'api_url: after the reload the events reached the second stand-in')
  or show_state($node, $bunce2);
is_deeply([ sort { $a <=> $b } @{ payload_ns($bunce2->requests) } ], [ 31, 32 ],
	'api_url: exactly those two');
is($bunce->stats->{received}, $seq, 'api_url: the first stand-in got nothing more');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'outbox empty');

# Last: nothing in the whole log mentions either key.
$log = log_since($node, 0);
ok($log !~ /\Q$old_key\E/ && $log !~ /\Q$new_key\E/, 'no key in the server log at the end');

$node->stop;
$bunce->stop;
$bunce2->stop;
done_testing();
