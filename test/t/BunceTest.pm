
# Shared helpers for the bunce TAP tests: the Bunce stand-in (test/bunce_standin.py) and its
# control API, a PostgreSQL node with bunce preloaded and pointed at a stand-in, a PgBouncer in
# front of a node, and bounded waits for conditions (never fixed sleeps where a condition can
# be waited for).
#
#   my $bunce = BunceTest::Standin->start(rate_limit => 0);
#   my $node  = bunce_node('main', $bunce, conf => "bunce.rate_limit = 0\n");
#   $node->safe_psql('postgres', enqueue_sql(1));
#   ok(wait_for('1 delivered', sub { $bunce->stats->{delivered} == 1 }), '...');
#   my $pgb = BunceTest::PgBouncer->start($node);     # psql, safe_psql, wait_sql go through it
package BunceTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter 'import';
use File::Basename qw(dirname);
use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Scalar::Util qw(looks_like_number);
use Time::HiRes qw(time usleep);
use Test::More;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

our @EXPORT = qw(
  $EVENT_ID bunce_node wait_for wait_sql sql_value enqueue_sql worker_pid
  log_offset log_since log_count show_state requests_where payload_ns sorted_uniq
  wait_worker_idle bunce_conf accepted_by_n
);

# The event every test triggers unless it needs another (any UUID does: the stand-in accepts
# every event unless told the list with config(events => [...])).
our $EVENT_ID = '9bb6215c-e2b1-4e51-abff-3a96ca185088';

my $STANDIN_SCRIPT = abs_path(dirname(__FILE__) . '/../bunce_standin.py');

# --------------------------------------------------------------------------------------------
# Waiting.

# Calls $cond every interval until it returns true (returns that value) or the timeout
# passes (returns 0 after a diag naming what was awaited, unless quiet => 1).
sub wait_for
{
	my ($desc, $cond, %opt) = @_;
	my $timeout  = $opt{timeout}     // 30;
	my $interval = $opt{interval_ms} // 50;
	my $deadline = time() + $timeout;
	while (1)
	{
		my $v = $cond->();
		return $v if $v;
		if (time() > $deadline)
		{
			# quiet => 1: for watches that are expected to see nothing
			diag("timed out after ${timeout}s waiting for: $desc") unless $opt{quiet};
			return 0;
		}
		usleep($interval * 1000);
	}
}

# Runs $sql until its output equals $expected (errors count as "not yet": the server may be
# restarting). Bounded, unlike poll_query_until's 180 s default.
sub wait_sql
{
	my ($node, $sql, $expected, %opt) = @_;
	$expected = 't' unless defined $expected;
	my $last = '';
	my $ok = wait_for(
		"query [$sql] to return [$expected]",
		sub {
			my ($out, $err) = ('', '');
			$node->psql($opt{db} // 'postgres', $sql,
				stdout => \$out, stderr => \$err);
			$last = "$out" . ($err ne '' ? " (stderr: $err)" : '');
			return $out eq $expected && $err eq '';
		},
		timeout     => $opt{timeout} // 30,
		interval_ms => $opt{interval_ms} // 100);
	diag("last output: $last") unless $ok;
	return $ok;
}

# One value (or '' on error) without dying: for diagnostics and polling.
sub sql_value
{
	my ($node, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err);
	return $out;
}

# --------------------------------------------------------------------------------------------
# The node.

# A node with bunce preloaded, pointed at $standin (or at url => ...), extension created
# (unless no_extension => 1) and the worker seen running. Options: conf (extra
# postgresql.conf text), init (hashref of init options), key, url, wait_state (default
# 'running'; undef to not wait).
sub bunce_node
{
	my ($name, $standin, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	$node->append_conf('postgresql.conf',
		bunce_conf($opt{url} // $standin->url, key => $opt{key}));
	$node->append_conf('postgresql.conf', $opt{conf}) if defined $opt{conf};
	$node->start;
	return $node if $opt{no_extension};

	$node->safe_psql('postgres', 'CREATE EXTENSION bunce');
	# The worker looks for the extension every 5 s; a reload (SIGHUP sets its latch) makes it
	# look now, which keeps the tests short. 060 tests the unpoked path.
	$node->reload;
	my $state = exists $opt{wait_state} ? $opt{wait_state} : 'running';
	if (defined $state)
	{
		wait_sql($node, 'SELECT state FROM bunce.status', $state, timeout => 20)
		  or BAIL_OUT("bunce worker of node $name did not reach state $state");
	}
	return $node;
}

# The postgresql.conf lines of a node with bunce preloaded and pointed at $url (options: key,
# preload: the whole shared_preload_libraries list).
sub bunce_conf
{
	my ($url, %opt) = @_;
	my $key     = $opt{key}     // 'sk_test_standin';
	my $preload = $opt{preload} // 'bunce';
	return <<"EOC";
shared_preload_libraries = '$preload'
bunce.database = 'postgres'
bunce.api_url = '$url'
bunce.api_key = '$key'
bunce.request_timeout = '2s'
# No catalog syncs on their own: the tests count requests (t/120_catalog.pl turns them on).
bunce.catalog_refresh = 0
EOC
}

# SQL that enqueues one event per n in @ns, each in its own transaction (psql autocommit),
# with payload {"email": "u<n>@example.com", "n": n, "tag": tag, "at": now()}.
sub enqueue_sql
{
	my ($ns, %opt) = @_;
	my @ns  = ref $ns ? @$ns : ($ns);
	my $tag = $opt{tag}   // 'test';
	my $ev  = $opt{event} // $EVENT_ID;
	return join '',
	  map {
		"SELECT bunce_trigger('$ev', jsonb_build_object('email', 'u$_\@example.com', "
		  . "'n', $_, 'tag', '$tag', 'at', now()));\n"
	  } @ns;
}

sub worker_pid
{
	my ($node) = @_;
	return sql_value($node,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'bunce worker'");
}

# The worker waits on its latch (idle between rounds): nothing in flight, nothing due.
sub wait_worker_idle
{
	my ($node) = @_;
	return wait_sql(
		$node,
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bunce worker' "
		  . "AND state = 'idle' AND wait_event_type = 'Extension' "
		  . "AND (SELECT in_flight FROM bunce.status) = 0 "
		  . "AND NOT EXISTS (SELECT FROM bunce.outbox)",
		'1', timeout => 20);
}

sub log_offset { my ($node) = @_; return -s $node->logfile // 0; }

sub log_since
{
	my ($node, $offset) = @_;
	return slurp_file($node->logfile, $offset // 0);
}

# How many messages of the node's log (from $offset) match $re. Only lines that begin a
# message count, and not the "statement:" lines of log_statement = all (the TAP default),
# which would echo the test's own queries.
sub log_count
{
	my ($node, $re, $offset) = @_;
	return scalar grep { /^\d{4}-\d\d-\d\d / && !/ LOG:  statement: / && /$re/ }
	  split /\n/, log_since($node, $offset);
}

# note()s what helps to understand a failure.
sub show_state
{
	my ($node, $standin, $what) = @_;
	note("---- state" . ($what ? " ($what)" : ''));
	if ($node)
	{
		note("bunce.status: "
			  . sql_value($node, 'SELECT row_to_json(s) FROM bunce.status s'));
		note("outbox: "
			  . sql_value($node,
				"SELECT count(*) || ' rows, ' || count(*) FILTER (WHERE sending_since IS NOT NULL) "
				  . "|| ' claimed, last_status ' || coalesce(string_agg(DISTINCT last_status::text, ','), '-') "
				  . "|| ', last_error ' || coalesce(max(last_error), '-') FROM bunce.outbox"));
		note("dead letters: "
			  . sql_value($node,
				"SELECT coalesce(json_agg(json_build_object('id', id, 'reason', reason, 'status', "
				  . "http_status, 'message', message, 'attempts', attempts)), '[]') FROM bunce.dead_letters"));
		my @log = split /\n/, log_since($node, 0);
		@log = grep { /bunce|ERROR|FATAL|PANIC|terminated/ && !/statement: / } @log;
		@log = @log[-25 .. -1] if @log > 25;
		note("log: $_") for @log;
	}
	if ($standin)
	{
		my $s = eval { $standin->stats };
		note("stand-in stats: " . ($s ? JSON::PP->new->canonical->encode($s) : "unavailable: $@"));
	}
	return;
}

# Requests recorded by $standin (since seq $since) for which $filter->($record) is true.
sub requests_where
{
	my ($standin, $filter, $since) = @_;
	return [ grep { $filter->($_) } @{ $standin->requests($since // 0) } ];
}

# The "n" of each request's payload, in arrival order.
sub payload_ns
{
	my ($requests) = @_;
	return [ map { $_->{json}{payload}{n} // 'none' } @$requests ];
}

# Requests $standin answered 2xx, by payload n: arrays of their Idempotency-Keys, in order.
sub accepted_by_n
{
	my ($standin) = @_;
	my %by_n;
	for my $r (@{ $standin->requests })
	{
		next unless ($r->{status} // 0) == 200;
		push @{ $by_n{ $r->{json}{payload}{n} } }, $r->{headers}{'idempotency-key'};
	}
	return \%by_n;
}

# The distinct values of a list, sorted: numerically when all of them are numbers, else as
# strings. The one helper for "each once" checks; the tests keep no copies of their own.
sub sorted_uniq
{
	my %seen;
	my @distinct = grep { !$seen{$_}++ } @_;
	return [ sort { $a <=> $b } @distinct ]
	  unless grep { !looks_like_number($_) } @distinct;
	return [ sort @distinct ];
}

# --------------------------------------------------------------------------------------------
# The stand-in, one process per object, killed at END at the latest.
package BunceTest::Standin;

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time usleep);
use Test::More;
use PostgreSQL::Test::Utils;

my @running;
my $json = JSON::PP->new->canonical;

# start(rate_limit => N, api_key => K, block_seconds => S)
sub start
{
	my ($class, %opt) = @_;
	my $dir       = PostgreSQL::Test::Utils::tempdir('standin');
	my $port_file = "$dir/port";
	my @cmd = ('/usr/bin/python3', $STANDIN_SCRIPT, '--port', '0', '--port-file',
		$port_file, '--quiet');
	push @cmd, '--rate-limit', $opt{rate_limit} if defined $opt{rate_limit};
	push @cmd, '--api-key', $opt{api_key} if defined $opt{api_key};
	push @cmd, '--block-seconds', $opt{block_seconds} if defined $opt{block_seconds};

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		exec(@cmd) or POSIX::_exit(127);
	}
	my $self = bless { pid => $pid, port => undef }, $class;
	push @running, $self;

	my $deadline = time() + 15;
	while (time() < $deadline)
	{
		if (-s $port_file)
		{
			my $text = slurp_file($port_file);
			if ($text =~ /^(\d+)\n/) { $self->{port} = $1; last; }
		}
		if (waitpid($pid, POSIX::WNOHANG()) == $pid)
		{
			$self->{pid} = undef;
			die "bunce stand-in exited early (status $?): @cmd";
		}
		usleep(20_000);
	}
	die "bunce stand-in did not write $port_file within 15 s" unless $self->{port};
	$self->{http} = HTTP::Tiny->new(timeout => 15, keep_alive => 1);
	$self->call('GET', '/control/health');
	note("bunce stand-in pid $pid on port $self->{port}");
	return $self;
}

sub port { return $_[0]{port}; }
sub url  { return "http://127.0.0.1:$_[0]{port}/v1"; }

sub call
{
	my ($self, $method, $path, $body) = @_;
	my %args;
	if (defined $body)
	{
		$args{content} = $json->encode($body);
		$args{headers} = { 'Content-Type' => 'application/json' };
	}
	my $r = $self->{http}->request($method, "http://127.0.0.1:$self->{port}$path", \%args);
	die "stand-in $method $path: $r->{status} $r->{reason} $r->{content}"
	  unless $r->{success};
	return decode_json($r->{content});
}

# script([steps], every => {nth => N, delay_ms => MS} | undef)
# script([steps], customer => KEY): the steps apply to the requests of that customer only
# (customer_id, else customer.email, else email; see bunce_rules.py).
sub script
{
	my ($self, $steps, %opt) = @_;
	my $body = { steps => $steps // [] };
	$body->{every}    = $opt{every}    if exists $opt{every};
	$body->{customer} = $opt{customer} if defined $opt{customer};
	return $self->call('POST', '/control/script', $body);
}

sub requests
{
	my ($self, $since) = @_;
	return $self->call('GET', '/control/requests?since=' . ($since // 0))->{requests};
}

# The requests of one customer (since seq $since), in arrival order.
sub requests_of
{
	my ($self, $customer, $since) = @_;
	my $query = $self->{http}
	  ->www_form_urlencode({ since => $since // 0, customer => $customer });
	return $self->call('GET', "/control/requests?$query")->{requests};
}

sub stats  { return $_[0]->call('GET',  '/control/stats'); }
sub reset  { return $_[0]->call('POST', '/control/reset', {}); }
sub config { my ($self, %cfg) = @_; return $self->call('POST', '/control/config', \%cfg); }

sub stop
{
	my ($self) = @_;
	my $pid = $self->{pid};
	return unless $pid;
	$self->{pid} = undef;
	kill 'TERM', $pid;
	my $deadline = time() + 5;
	while (time() < $deadline)
	{
		return if waitpid($pid, POSIX::WNOHANG()) == $pid;
		usleep(20_000);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return;
}

END
{
	local $?;    # keep the test's exit status
	$_->stop for @running;
}

1;

# --------------------------------------------------------------------------------------------
# PgBouncer (Debian's /usr/sbin/pgbouncer) in front of a node, run as the test's own user on a
# free loopback port, transaction pooling. The object is a PostgreSQL::Test::Cluster whose
# host and port are PgBouncer's, so psql, safe_psql, background_psql and wait_sql connect
# through it (it is never initialised or started as a server). Cluster's END stops every node
# with teardown_node, which here kills PgBouncer by its pid: it does not outlive a dying test.
#
#   my $pgb = BunceTest::PgBouncer->start($node,
#       databases => { postgres_one => 'pool_size=1' },   # more entries, all to dbname=postgres
#       users => ['app']);                                  # login roles besides the test's own
#   $pgb->safe_psql('postgres', 'SELECT 1');               # a client of pool "postgres"
#   $pgb->show('POOLS');                                   # admin console, rows as hashes
package BunceTest::PgBouncer;

use strict;
use warnings;

use parent -norequire, 'PostgreSQL::Test::Cluster';
use POSIX ();
use Time::HiRes qw(time usleep);
use Test::More;
use PostgreSQL::Test::Utils;

our $BINARY = '/usr/sbin/pgbouncer';

# Pool "postgres" (default_pool_size = max_db_connections = pool_size, default 4) and the
# extra entries of databases => { name => 'pgbouncer options' }, each to the node's database
# postgres over its unix socket; auth_type trust with an auth_file listing the test's user and
# users => [...]; the log is kept with the nodes' logs.
sub start
{
	my ($class, $node, %opt) = @_;
	# Not a skip: CI would pass without testing. test/deps.sh installs the package.
	die "$BINARY is missing: install the Debian package pgbouncer (test/deps.sh)" unless -x $BINARY;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $self = $class->new($opt{name} // 'pgbouncer', port => $port);
	$self->{_host} = '127.0.0.1';
	my $dir  = PostgreSQL::Test::Utils::tempdir('pgbouncer');
	my $me   = getpwuid($<);
	my $size = $opt{pool_size} // 4;
	my $server = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres';
	my %dbs = (postgres => '', %{ $opt{databases} // {} });
	my $databases = join '', map { "$_ = $server $dbs{$_}\n" } sort keys %dbs;

	open my $users, '>', "$dir/userlist.txt" or die "$dir/userlist.txt: $!";
	print $users qq{"$_" ""\n} for $me, @{ $opt{users} // [] };
	close $users;
	my $ini = "$dir/pgbouncer.ini";
	open my $fh, '>', $ini or die "$ini: $!";
	print $fh <<"EOI";
[databases]
$databases
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $me
pool_mode = transaction
default_pool_size = $size
max_db_connections = $size
max_client_conn = 100
pidfile = $dir/pgbouncer.pid
logfile = ${\ $self->logfile }
EOI
	print $fh $opt{conf} if defined $opt{conf};
	close $fh;

	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDOUT, ">>", $self->logfile;    # what comes before its own log (-q: no copy)
		open STDERR, '>&', \*STDOUT;
		exec($BINARY, "-q", $ini) or POSIX::_exit(127);
	}
	$self->{_pgbouncer_pid} = $pid;
	my $up = BunceTest::wait_for(
		"pgbouncer on port $port",
		sub {
			die "pgbouncer exited at start (status $?), see " . $self->logfile
			  if waitpid($pid, POSIX::WNOHANG()) == $pid;
			my ($rc) = $self->psql('pgbouncer', 'SHOW VERSION');
			return $rc == 0;
		},
		timeout => 15);
	die "pgbouncer did not answer on port $port within 15 s" unless $up;
	note("pgbouncer pid $pid on 127.0.0.1:$port in front of node " . $node->name);
	return $self;
}

# Rows of the admin console's SHOW <what> (POOLS, SERVERS, CLIENTS, ...), each a hash by
# column name.
sub show
{
	my ($self, $what) = @_;
	my $out = $self->safe_psql('pgbouncer',
		"\\pset tuples_only off\n\\pset footer off\nSHOW $what;");
	my ($head, @rows) = split /\n/, $out;
	my @cols = split /\|/, $head;
	return [ map { my %r; @r{@cols} = split /\|/, $_, -1; \%r } @rows ];
}

# The SHOW POOLS row of one pool (database, and user: the test's own by default).
sub pool
{
	my ($self, $db, $user) = @_;
	$user //= getpwuid($<);
	my ($row) = grep { $_->{database} eq $db && $_->{user} eq $user } @{ $self->show('POOLS') };
	return $row // {};
}

# By its pid: SIGTERM, then SIGKILL after 5 s. Also what Cluster's END calls (teardown_node).
sub stop
{
	my ($self) = @_;
	my $pid = delete $self->{_pgbouncer_pid};
	return 1 unless $pid;
	kill 'TERM', $pid;
	my $deadline = time() + 5;
	while (time() < $deadline)
	{
		return 1 if waitpid($pid, POSIX::WNOHANG()) == $pid;
		usleep(20_000);
	}
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return 1;
}

1;
