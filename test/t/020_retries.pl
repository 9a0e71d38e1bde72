# Retries and dead letters: transient failures (5xx, dropped connection, timeout) are retried
# with the same Idempotency-Key until delivered; permanent refusals (422, 2xx with success
# false) become dead letters after one request; max_attempts exhausted becomes a dead letter;
# bunce.retry_dead_letters() sends them again (a replay, new ids) with their original key.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start;
my $node  = bunce_node('retries', $bunce,
	conf => "bunce.rate_limit = 0\nbunce.request_timeout = '1s'\n");

# Scripts the stand-in, enqueues event n and waits until it left the outbox (delivered or dead
# lettered). Returns (outbox id, requests for n).
sub run_case
{
	my ($name, $n, $steps) = @_;
	$bunce->script($steps) if $steps;
	my $seq = $bunce->stats->{received};
	my $id = $node->safe_psql('postgres', enqueue_sql($n, tag => $name));
	wait_sql($node, "SELECT count(*) FROM bunce.outbox WHERE id = $id", '0', timeout => 30)
	  or show_state($node, $bunce, $name);
	my $reqs = requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == $n }, $seq);
	note("$name: " . join(', ',
		map { sprintf('%.3f %s', $_->{received_at}, $_->{status} // $_->{fault}) } @$reqs));
	return ($id, $reqs);
}

sub keys_of { return [ map { $_->{headers}{'idempotency-key'} } @{ $_[0] } ]; }

sub statuses { return [ map { $_->{status} // $_->{fault} } @{ $_[0] } ]; }

sub delivery_row
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT http_status, attempts, idempotency_key FROM bunce.deliveries WHERE id = $id");
}

sub dead_row
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT reason, http_status, message, attempts, idempotency_key, payload->>'n' "
		  . "FROM bunce.dead_letters WHERE id = $id");
}

# ---- 503, 503, then 200 ---------------------------------------------------------------------

$bunce->script([ { status => 503 }, { status => 503 } ]);
my $seq = $bunce->stats->{received};
my $id = $node->safe_psql('postgres', enqueue_sql(1, tag => '503'));
# Between attempts the row waits, with what went wrong (backoff is at least 0.5 s).
ok( wait_sql($node,
		"SELECT count(*) FROM bunce.outbox WHERE id = $id AND last_status = 503 "
		  . "AND last_error = 'scripted 503' AND attempts >= 1 AND sending_since IS NULL",
		'1', timeout => 10, interval_ms => 50),
	'503: while waiting to retry, the row records last_status and last_error');
wait_sql($node, "SELECT count(*) FROM bunce.outbox WHERE id = $id", '0');
my $reqs = requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == 1 }, $seq);
is_deeply(statuses($reqs), [ 503, 503, 200 ], '503: three requests, 503, 503, 200')
  or show_state($node, $bunce);
my $keys = keys_of($reqs);
is(scalar(@{ sorted_uniq(@$keys) }), 1, '503: the same Idempotency-Key on every attempt');
is(delivery_row($id), "200|3|$keys->[0]", '503: delivered, 3 attempts recorded, same key');
my @gaps = map { $reqs->[$_]{received_at} - $reqs->[ $_ - 1 ]{received_at} } 1 .. $#$reqs;
note(sprintf('503: gaps %.3f s, %.3f s', @gaps));
# attempt 1 waits in [0.5, 1] s, attempt 2 in [0.5, 2] s (plus the round trip)
ok($gaps[0] >= 0.45 && $gaps[0] < 2.5, 'first retry after 0.5..1 s of backoff');
ok($gaps[1] >= 0.45 && $gaps[1] < 3.5, 'second retry after 0.5..2 s of backoff');
is($node->safe_psql('postgres', 'SELECT last_error_status, last_error FROM bunce.status'),
	'503|scripted 503', 'bunce.status shows the last error');

# ---- 503 with Retry-After: 2 waits at least that long ----------------------------------------

$bunce->script([ { status => 503, retry_after => 2 } ]);
$seq = $bunce->stats->{received};
$id = $node->safe_psql('postgres', enqueue_sql(9, tag => '503-retry-after'));
ok( wait_sql($node,
		"SELECT count(*) FROM bunce.outbox WHERE id = $id AND last_status = 503 "
		  . "AND sending_since IS NULL AND next_attempt_at > now() + interval '1 s'",
		'1', timeout => 10, interval_ms => 50),
	'503 + Retry-After: the row waits for its retry, due in more than 1 s');
# Give the worker's once-a-second count its chance: still well inside the 2 s wait.
my $status_waiting = '';
wait_for('bunce.status to count the waiting event', sub {
	$status_waiting = sql_value($node, 'SELECT waiting_retry, due_now FROM bunce.status');
	return $status_waiting eq '1|0';
}, timeout => 1.2, interval_ms => 100, quiet => 1);
is($status_waiting, '1|0',
	'503 + Retry-After: bunce.status shows waiting_retry 1, due_now 0 during the backoff');
wait_sql($node, "SELECT count(*) FROM bunce.outbox WHERE id = $id", '0');
$reqs = requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == 9 }, $seq);
is_deeply(statuses($reqs), [ 503, 200 ], '503 + Retry-After: retried, delivered');
my $gap = @$reqs == 2 ? $reqs->[1]{received_at} - $reqs->[0]{received_at} : 0;
cmp_ok($gap, '>=', 1.95, sprintf('503 + Retry-After: 2: the retry waited for it (%.3f s)', $gap));

# ---- the other answer classes: 400, 404, 413 permanent; 408, 502 transient ------------------

my $n = 50;
for my $status (400, 404, 413)
{
	my ($sid, $sreqs) = run_case("status-$status", ++$n,
		[ { status => $status, body => { success => JSON::PP::false, message => "refused $status" } } ]);
	is(scalar @$sreqs, 1, "$status: one request");
	# A 404 says what it means for a trigger before Bunce's own message.
	my $says = $status == 404 ? 'the event does not exist in this Bunce account \(.*\): ' : '';
	like(dead_row($sid), qr/^rejected\|$status\|${says}refused $status\|1\|/, "$status: dead letter at once");
}
for my $status (408, 502)
{
	my ($sid, $sreqs) = run_case("status-$status", ++$n, [ { status => $status } ]);
	is_deeply(statuses($sreqs), [ $status, 200 ], "$status: retried, then delivered");
	is(delivery_row($sid), "200|2|" . (keys_of($sreqs)->[0] // ''), "$status: two attempts, same key");
}
$node->safe_psql('postgres',
	'SELECT bunce.discard_dead_letters(ARRAY(SELECT id FROM bunce.dead_letters))');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0',
	'discard_dead_letters() removed those three');

# ---- dropped connection, then 200 -----------------------------------------------------------

# When the dropped connection was a reused keep-alive one, libcurl itself re-sends the POST at
# once on a fresh connection ("connection died, retrying"), unseen by the worker: then the
# worker counts one attempt for two requests. On a fresh connection the worker retries after
# its backoff and counts two. Either way: one 200, one key.
($id, $reqs) = run_case('drop', 2, [ { drop => 1 } ]);
is_deeply(statuses($reqs), [ 'drop', 200 ], 'drop: dropped, then delivered');
is(scalar(@{ sorted_uniq(@{ keys_of($reqs) }) }), 1, 'drop: same Idempotency-Key');
like(delivery_row($id), qr/^200\|[12]\|\Q@{[ keys_of($reqs)->[0] ]}\E$/, 'drop: delivered, same key');
if (@$reqs == 2)
{
	my $gap = $reqs->[1]{received_at} - $reqs->[0]{received_at};
	my $attempts = (split /\|/, delivery_row($id))[1];
	note(sprintf('drop: resent after %.3f s, %d attempt(s) recorded%s', $gap, $attempts,
			$gap < 0.3 ? ' (libcurl re-sent on its own on a fresh connection)' : ''));
	is($attempts, $gap < 0.3 ? 1 : 2,
		'drop: attempts recorded match who retried (libcurl at once, or the worker after backoff)');
}

# ---- hung answer (request_timeout 1 s), then 200 --------------------------------------------

($id, $reqs) = run_case('hang', 3, [ { hang => 1 } ]);
is_deeply(statuses($reqs), [ 'hang', 200 ], 'hang: timed out, then delivered');
is(scalar(@{ sorted_uniq(@{ keys_of($reqs) }) }), 1, 'hang: same Idempotency-Key');
is(delivery_row($id), "200|2|" . keys_of($reqs)->[0], 'hang: delivered after 2 attempts');
if (@$reqs == 2)
{
	my $gap = $reqs->[1]{received_at} - $reqs->[0]{received_at};
	ok($gap >= 0.95 + 0.45 && $gap < 1 + 1 + 1.5,
		sprintf('hang: retried after the 1 s timeout plus backoff (%.3f s)', $gap));
}
else { fail('hang: two requests'); }

# ---- 422: dead letter at once, never retried ------------------------------------------------

my $msg422 = 'amount must be a number';
my $id422;
# Bunce gives details in an error object besides "message": the dead letter keeps the body.
($id422, $reqs) = run_case('422', 4,
	[ { status => 422, body => { success => JSON::PP::false, message => $msg422,
				errors => { amount => [ 'must be numeric' ] } } } ]);
is(dead_row($id422), "rejected|422|$msg422|1|" . (keys_of($reqs)->[0] // '') . "|4",
	"422: dead letter with Bunce's status and message, 1 attempt, same key and payload");
my $kept = $node->safe_psql('postgres', "SELECT response::jsonb -> 'errors' ->> 'amount', "
	  . "advice ~ 'Bunce refused this payload' FROM bunce.dead_letters WHERE id = $id422");
is($kept, '["must be numeric"]|t',
	"422: the dead letter keeps Bunce's answer body, details included, and says what to do");
# Another event delivered after it: the worker went on, and sent the 422 one exactly once.
run_case('after-422', 5);
$reqs = requests_where($bunce, sub { ($_[0]{json}{payload}{n} // 0) == 4 });
is(scalar @$reqs, 1, '422: requested exactly once');
is($node->safe_psql('postgres', 'SELECT last_error_status, last_error FROM bunce.status'),
	"422|$msg422", '422: bunce.status shows it as the last error');

# ---- 200 with success false (and the old "status": false envelope) ---------------------------

my ($id_sf, $id_st);
($id_sf, $reqs) = run_case('success-false', 6,
	[ { status => 200, body => { success => JSON::PP::false, message => 'event is archived' } } ]);
is(scalar @$reqs, 1, 'success false: one request');
is(dead_row($id_sf), "rejected|200|event is archived|1|" . (keys_of($reqs)->[0] // '') . "|6",
	'success false: dead letter, status 200, message kept');
($id_st, $reqs) = run_case('status-false', 7,
	[ { status => 201, body => { status => JSON::PP::false, message => 'customer blocked' } } ]);
is(scalar @$reqs, 1, 'status false: one request');
is(dead_row($id_st), "rejected|201|customer blocked|1|" . (keys_of($reqs)->[0] // '') . "|7",
	'{"status": false} (old envelope): dead letter too');

# ---- max_attempts = 2 with two 500s: attempts exhausted -------------------------------------

$node->append_conf('postgresql.conf', "bunce.max_attempts = 2\n");
$node->reload;
wait_sql($node, "SELECT setting FROM pg_settings WHERE name = 'bunce.max_attempts'", '2');
my $id_ex;
($id_ex, $reqs) = run_case('exhausted', 8, [ { status => 500 }, { status => 500 } ]);
is_deeply(statuses($reqs), [ 500, 500 ], 'max_attempts 2: two requests, no third');
is(dead_row($id_ex), "attempts_exhausted|500|scripted 500|2|" . (keys_of($reqs)->[0] // '') . "|8",
	'max_attempts 2: dead letter, reason attempts_exhausted, 2 attempts');
is(scalar(@{ sorted_uniq(@{ keys_of($reqs) }) }), 1, 'max_attempts 2: same key on both');
is($node->safe_psql('postgres', 'SELECT dead_letters, failed FROM bunce.status'),
	'4|7', 'bunce.status: 4 dead letters (3 discarded), 7 failed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '0', 'outbox is empty');

# ---- bunce.retry_dead_letters(): a replay (new id), same key, delivered ------------------------

my %dead_key = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', 'SELECT id, idempotency_key FROM bunce.dead_letters');
is(scalar keys %dead_key, 4, 'four dead letters to retry');
$seq = $bunce->stats->{received};
is($node->safe_psql('postgres', "SELECT bunce.retry_dead_letters(ARRAY[$id422])"),
	'1', 'retry_dead_letters(ids) moved one');
ok( wait_sql($node,
		"SELECT count(*) FROM bunce.deliveries WHERE idempotency_key = '$dead_key{$id422}' AND id > $id422", '1'),
	'the retried 422 event was delivered, under a new id');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'),
	'3', 'the other dead letters stayed');
is($node->safe_psql('postgres', 'SELECT bunce.retry_dead_letters()'),
	'3', 'retry_dead_letters() moved the other three');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'all retried events left the outbox');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.dead_letters'), '0', 'no dead letters left');
$reqs = requests_where($bunce, sub { 1 }, $seq);
is(scalar @$reqs, 4, 'four requests for the four retried events');
my %sent_key = map { $_->{json}{payload}{n} => $_->{headers}{'idempotency-key'} } @$reqs;
my %id_of_n = (4 => $id422, 6 => $id_sf, 7 => $id_st, 8 => $id_ex);
is_deeply({ map { $_ => $sent_key{$_} } keys %id_of_n },
	{ map { $_ => $dead_key{ $id_of_n{$_} } } keys %id_of_n },
	'each retried event carried its original Idempotency-Key');
is(scalar(grep { $_->{status} == 200 } @$reqs), 4, 'all four accepted');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM bunce.deliveries WHERE idempotency_key IN ("
		  . join(', ', map { "'$dead_key{$_}'" } $id422, $id_sf, $id_st, $id_ex)
		  . ") AND attempts = 1 AND http_status = 200"),
	'4',
	'bunce.deliveries has them, with their original keys, one attempt each after the retry');
# No event accepted twice. (The stand-in's own "duplicates" counter counts any 2xx as a
# success, so the dead-lettered 200/201 success:false answers followed by the retry count
# there; count real acceptances instead: normal, unscripted 2xx answers.)
my %accepted;
$accepted{ $_->{headers}{'idempotency-key'} }++
  for grep { ($_->{status} // 0) == 200 && !$_->{fault} } @{ $bunce->requests };
is(scalar keys %accepted, 11, 'eleven events accepted by the stand-in in the whole run');
is(scalar(grep { $_ > 1 } values %accepted), 0, 'none of them accepted twice');
is($bunce->stats->{delivered}, 11, 'stand-in: 11 delivered');

$node->stop;
$bunce->stop;
done_testing();
