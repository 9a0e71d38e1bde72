# Monitoring: bunce.metrics counts what the worker did (answers by class, the latency
# histogram, pauses with their reason); NOTIFY bunce tells a listener of each change of state
# and each dead letter; the real prometheus-postgres-exporter, run with the shipped
# monitoring/postgres_exporter.yml, exposes the same series on /metrics.
use strict;
use warnings;

use File::Basename qw(dirname);
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $monitoring = dirname(__FILE__) . '/../../monitoring';
my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('monitoring', $bunce, conf => "bunce.rate_limit = 0\nbunce.request_timeout = '1s'\n");

# name => value of the unlabelled sample, or of the one whose labels include %want
sub metric
{
	my ($name, %want) = @_;
	my $cond = join '', map { " AND labels ->> '$_' = '$want{$_}'" } sort keys %want;
	return $node->safe_psql('postgres', "SELECT value FROM bunce.metrics WHERE name = '$name'$cond");
}

# --------------------------------------------------------------------------------------------
# A listener on channel bunce (psql prints what arrived after each command).

my ($in, $out, $err) = ('', '', '');
my $listener = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err, IPC::Run::timeout(300));
$in .= "LISTEN bunce;\n";
my $seen  = 0;    # notifications already returned
my $polls = 0;

# The notifications received since the last call, decoded. (psql prints those that arrived
# after the result of each command: a poll's own result comes first.)
sub notifications
{
	$polls++;
	$in .= "SELECT 'poll $polls';\n";
	$listener->pump while $out !~ /^poll $polls$/m;
	my @all = $out =~ /^Asynchronous notification "bunce" with payload "(.*)" received from server process with PID \d+\.$/mg;
	my @new = map { decode_json($_) } @all[ $seen .. $#all ];
	$seen = @all;
	return @new;
}

# Waits for a notification for which $match returns true; returns it (or undef).
sub wait_notification
{
	my ($what, $match) = @_;
	my $found;
	wait_for($what, sub { ($found) = grep { $match->($_) } notifications(); $found }, interval_ms => 100);
	return $found;
}

notifications();    # listening from here on

# --------------------------------------------------------------------------------------------
# Answers of every class, each counted.

enqueue_and_wait([ 1 .. 5 ], 'ok');
$bunce->script([ { status => 422, body => '{"success": false, "message": "first_name is required"}' } ]);
my $dead_id = $node->safe_psql('postgres', enqueue_sql(6, tag => 'refused'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'the refused event left the outbox');
my $dead = wait_notification('the dead letter notification', sub { $_[0]{event} eq 'dead_letter' });
is_deeply($dead, { event => 'dead_letter', database => 'postgres', id => $dead_id, reason => 'rejected', http_status => 422 },
	'NOTIFY bunce: the dead letter, with its id, reason and status');

$bunce->script([ { status => 503 }, { hang => JSON::PP::true } ]);
enqueue_and_wait([7], 'transient');
# Nothing listens on the port a server that is gone had: the connection is refused.
my $gone = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.api_url = 'http://127.0.0.1:$gone/v1'");
$node->reload;
$node->safe_psql('postgres', enqueue_sql(9, tag => 'refused connection'));
ok(wait_sql($node, "SELECT value FROM bunce.metrics WHERE name = 'bunce_answers_total' AND labels ->> 'class' = 'connection'", '1'),
	'a refused connection is counted');
$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.api_url = '" . $bunce->url . "'");
$node->reload;
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 30), 'delivered once the server is back');

sub enqueue_and_wait
{
	my ($ns, $tag) = @_;
	$node->safe_psql('postgres', enqueue_sql($ns, tag => $tag));
	ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 60), "$tag: delivered")
	  or show_state($node, $bunce, $tag);
}

is(metric('bunce_answers_total', class => '2xx'),        '7', 'bunce_answers_total{class="2xx"}: 7 (a 200 each)');
is(metric('bunce_answers_total', class => '4xx'),        '1', '... 4xx: the 422');
is(metric('bunce_answers_total', class => '5xx'),        '1', '... 5xx: the 503');
is(metric('bunce_answers_total', class => 'timeout'),    '1', '... timeout: the answer that never came');
is(metric('bunce_answers_total', class => 'connection'), '1', '... connection: the refused one');
is(metric('bunce_delivered_total'), '7', 'bunce_delivered_total');
is(metric('bunce_failed_total'),    '1', 'bunce_failed_total: the dead letter');
is(metric('bunce_dead_letters'),    '1', 'bunce_dead_letters');
is(metric('bunce_delivery_latency_seconds_count'), '7', 'the latency histogram counts the 7 delivered');
ok(metric('bunce_delivery_latency_seconds_bucket', le => '0.005') <= metric('bunce_delivery_latency_seconds_bucket', le => '30'),
	'... in cumulative buckets');
cmp_ok(metric('bunce_delivery_latency_seconds_bucket', le => '0.5'), '<=', 5,
	'... those retried after a 503 and a timeout, or a refused connection, took longer than half a second');
cmp_ok(metric('bunce_delivery_latency_seconds_sum'), '>', 1, '... and the sum has its time');

# --------------------------------------------------------------------------------------------
# A refused key pauses delivery: bunce_paused{reason="key_refused"}, a notification; a new key
# resumes it, and the notification says what it resumed from.

$bunce->script([ { status => 401, body => '{"success": false, "message": "Invalid API key"}' } ]);
$node->safe_psql('postgres', enqueue_sql(8, tag => 'key'));
my $paused = wait_notification('the pause notification', sub { $_[0]{state} eq 'paused' });
is($paused->{reason}, 'key_refused', 'NOTIFY bunce: paused, reason key_refused');
like($paused->{message}, qr/Bunce rejected the API key/, '... with the message bunce.status shows');
ok(defined $paused->{until}, '... and until when');
is(metric('bunce_paused', reason => 'key_refused'), '1', 'bunce_paused{reason="key_refused"} = 1');
is(metric('bunce_answers_total', class => '401'), '1', 'bunce_answers_total{class="401"}');
$bunce->config(api_key => 'sk_test_rotated');
$node->safe_psql('postgres', "ALTER SYSTEM SET bunce.api_key = 'sk_test_rotated'");
$node->reload;
my $resumed = wait_notification('the resume notification', sub { $_[0]{state} eq 'running' });
is($resumed->{previous_state} . '/' . $resumed->{previous_reason}, 'paused/key_refused',
	'NOTIFY bunce: running again, after the key_refused pause');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0'), 'the held event was delivered with the new key');
is(metric('bunce_paused', reason => ''), '0', 'bunce_paused = 0, no reason');

$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = off');
$node->reload;
my $disabled = wait_notification('the disabled notification', sub { $_[0]{state} eq 'disabled' });
is($disabled->{reason}, 'disabled', 'NOTIFY bunce: disabled');
$node->safe_psql('postgres', 'ALTER SYSTEM SET bunce.enabled = on');
$node->reload;
ok(wait_notification('running again', sub { $_[0]{state} eq 'running' }), 'NOTIFY bunce: running again');

# --------------------------------------------------------------------------------------------
# The exporter: the shipped query file, a role with bunce_admin only.

SKIP:
{
	my $exporter = '/usr/bin/prometheus-postgres-exporter';
	skip 'prometheus-postgres-exporter is not installed (test/deps.sh installs it)', 1 unless -x $exporter;
	my $queries = "$monitoring/postgres_exporter.yml";
	$node->safe_psql('postgres', 'CREATE ROLE bunce_exporter LOGIN; GRANT bunce_admin TO bunce_exporter');
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $dsn = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=bunce_exporter sslmode=disable';
	my $log = PostgreSQL::Test::Utils::tempdir('exporter') . '/exporter.log';
	my $h = IPC::Run::start(
		[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$queries",
		  '--disable-default-metrics', '--disable-settings-metrics', '--no-collector.database',
		  '--no-collector.bgwriter' ],
		'<', \undef, '>', $log, '2>&1',
		init => sub { $ENV{DATA_SOURCE_NAME} = $dsn });
	my $http = HTTP::Tiny->new(timeout => 10);
	my $text = '';
	wait_for('the exporter\'s bunce series', sub {
		my $r = $http->get("http://127.0.0.1:$port/metrics");
		$text = $r->{success} ? $r->{content} : '';
		return $text =~ /^bunce_worker_up/m;
	}) or diag(slurp_file($log));
	my %series;
	for my $line (split /\n/, $text)
	{
		next unless $line =~ /^(bunce_\w+)(?:\{([^}]*)\})? (\S+)$/;
		my ($name, $labels, $value) = ($1, $2 // '', $3);
		my %l = $labels =~ /(\w+)="([^"]*)"/g;
		$series{$name}{ join ',', map { "$_=$l{$_}" } grep { $_ ne 'database' && $_ ne 'server' } sort keys %l } = $value;
		is($l{database}, 'postgres', "$name: labelled with its database") unless $series{$name}{_checked}++;
	}
	for my $name (qw(bunce_delivered_total bunce_failed_total bunce_dead_letters bunce_queue_depth bunce_due_now
		bunce_waiting_retry bunce_in_flight bunce_oldest_pending_seconds bunce_delivery_latency_seconds_bucket
		bunce_delivery_latency_seconds_sum bunce_delivery_latency_seconds_count bunce_answers_total bunce_paused
		bunce_possibly_duplicated_total bunce_rate_limit bunce_requests_last_minute bunce_worker_up bunce_in_recovery))
	{
		ok(exists $series{$name}, "the exporter exposes $name");
	}
	# The same values as bunce.metrics (those that did not move meanwhile).
	is($series{bunce_delivered_total}{''}, metric('bunce_delivered_total'), 'bunce_delivered_total as in bunce.metrics');
	is($series{bunce_answers_total}{'class=4xx'}, '1', 'bunce_answers_total{class="4xx"}');
	is($series{bunce_delivery_latency_seconds_bucket}{'le=+Inf'}, $series{bunce_delivery_latency_seconds_count}{''},
		'the histogram: +Inf bucket = count');
	is($series{bunce_paused}{'reason='}, '0', 'bunce_paused');
	$h->kill_kill;

	# The dashboard and the alert rules ask only for series the exporter exposes (a
	# histogram's _bucket, _sum and _count are series of their own).
	my $dashboard = decode_json(slurp_file("$monitoring/grafana-dashboard.json"));
	my @exprs = map { $_->{expr} } map { @{ $_->{targets} } } @{ $dashboard->{panels} };
	ok(@exprs >= 10, 'the dashboard has its panels\' queries');
	my $rules = slurp_file("$monitoring/alerts.yml");
	my @rule_exprs = $rules =~ /^ +expr: (\|\n(?: {10}.*\n)+|.*\n)/mg;
	is(scalar @rule_exprs, 9, 'the alert rules\' expressions');
	for my $expr (@exprs, @rule_exprs)
	{
		my @unknown = grep { !exists $series{$_} } $expr =~ /\b(bunce_\w+)/g;
		is("@unknown", '', "only exposed series in: $expr");
	}
}

SKIP:
{
	skip 'promtool is not installed (test/deps.sh installs prometheus)', 2 unless -x '/usr/bin/promtool';
	my ($out, $err);
	IPC::Run::run([ 'promtool', 'check', 'rules', "$monitoring/alerts.yml" ], '>', \$out, '2>', \$err);
	like($out, qr/SUCCESS: 9 rules found/, 'promtool check rules: the alert rules are valid') or diag($err);
	IPC::Run::run([ 'promtool', 'test', 'rules', "$monitoring/../test/monitoring/alerts_test.yml" ], '>', \$out, '2>', \$err);
	like($out, qr/SUCCESS/, 'promtool test rules: each alert fires on what should fire it, not on healthy series')
	  or diag("$out $err");
}

$in .= "\\q\n";
$listener->finish;
$node->stop;
done_testing();
