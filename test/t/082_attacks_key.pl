# Attacks on the API key: a proxy from the server's environment, hosts that merely look like
# loopback, per-database and per-role settings readable by others, and bunce.api_key_file
# (permissions, rotation on reload, a missing file). The key is never printed by this test:
# what could leak is only ever compared, and errors are redacted before they are shown.
use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use BunceTest;

my $conf_key = 'sk_test_secret_7c1d5a0e_conf';
my $db_key   = 'sk_test_secret_7c1d5a0e_db';
my $role_key = 'sk_test_secret_7c1d5a0e_role';
my $set_key  = 'sk_test_secret_7c1d5a0e_set';
my $fkey1    = 'sk_test_secret_7c1d5a0e_file1';
my $fkey2    = 'sk_test_secret_7c1d5a0e_file2';
my $fkey3    = 'sk_test_secret_7c1d5a0e_file3';
my @keys = ($conf_key, $db_key, $role_key, $set_key, $fkey1, $fkey2, $fkey3);

sub redact
{
	my ($text) = @_;
	$text //= '';
	$text =~ s/\Q$_\E/<KEY>/g for @keys;
	$text =~ s/sk_test_secret_\w+/<KEY>/g;
	return $text;
}

# ---- a fake proxy: records who connected and whether a key came along, nothing else ----------

my $dir = PostgreSQL::Test::Utils::tempdir('keys');
my $proxy_log = "$dir/proxy.log";
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 32, ReuseAddr => 1)
  or die "listen: $!";
my $proxy_port = $listener->sockport;
my $proxy_pid = fork();
die "fork: $!" unless defined $proxy_pid;
if ($proxy_pid == 0)
{
	open my $log, '>>', $proxy_log or POSIX::_exit(1);
	$log->autoflush(1);
	while (my $c = $listener->accept)
	{
		my $buf = '';
		my $sel = IO::Select->new($c);
		while (length($buf) < 1_000_000 && $sel->can_read(2))
		{
			my $n = sysread($c, my $chunk, 65536);
			last unless $n;
			$buf .= $chunk;
			last if $buf =~ /\r\n\r\n/ && $buf !~ /^POST/;
			last if $buf =~ /\r\n\r\n.*\}\s*$/s;
		}
		my ($first) = $buf =~ /^([A-Z]+ \S+)/;
		$first //= '-';
		$first =~ s/[^\x20-\x7e]/?/g;
		my $xauth = $buf =~ /^x-authorization:/mi ? 'yes' : 'no';
		my $key_seen = (grep { index($buf, $_) >= 0 } @keys) ? 'yes' : 'no';
		print $log "connection bytes=" . length($buf) . " x-authorization=$xauth key=$key_seen request=$first\n";
		print $c "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
		close $c;
	}
	POSIX::_exit(0);
}
close $listener;
END { local $?; if ($proxy_pid) { kill 'TERM', $proxy_pid; waitpid($proxy_pid, 0); } }

sub proxy_lines { return -e $proxy_log ? [ split /\n/, slurp_file($proxy_log) ] : []; }
my $proxy_url = "http://127.0.0.1:$proxy_port";

# Sanity: the fake proxy sees what is sent through it.
HTTP::Tiny->new(proxy => $proxy_url, timeout => 5)->get('http://127.0.0.1:9/sanity');
ok(wait_for('the sanity request', sub { @{ proxy_lines() } >= 1 }), 'sanity: the fake proxy records a request sent through it');
my $proxy_seen = @{ proxy_lines() };

# ---- the node, started with proxies in its environment --------------------------------------

my $bunce = BunceTest::Standin->start(rate_limit => 0, api_key => $conf_key);
my $pnode;
{
	local $ENV{http_proxy}  = $proxy_url;
	local $ENV{HTTP_PROXY}  = $proxy_url;
	local $ENV{https_proxy} = $proxy_url;
	local $ENV{HTTPS_PROXY} = $proxy_url;
	local $ENV{all_proxy}   = $proxy_url;
	local $ENV{ALL_PROXY}   = $proxy_url;
	local $ENV{no_proxy};
	local $ENV{NO_PROXY};
	delete $ENV{no_proxy};
	delete $ENV{NO_PROXY};
	$pnode = bunce_node('proxy', $bunce, key => $conf_key, wait_state => undef,
		conf => "bunce.rate_limit = 0\nbunce.request_timeout = '2s'\n");
}
my $pm_pid = (split /\n/, slurp_file($pnode->data_dir . '/postmaster.pid'))[0];
like(slurp_file("/proc/$pm_pid/environ"), qr/(^|\0)http_proxy=\Q$proxy_url\E\0/,
	'sanity: the postmaster runs with http_proxy pointing at the fake proxy');
ok(wait_sql($pnode, 'SELECT state FROM bunce.status', 'running'), 'the worker runs');

# ---- 3a. no proxy -----------------------------------------------------------------------------

$pnode->safe_psql('postgres', enqueue_sql([ 1, 2, 3 ], tag => 'proxy'));
ok(wait_for('3 delivered', sub { $bunce->stats->{delivered} >= 3 }, timeout => 15),
	'the events reached the stand-in directly, despite http_proxy & co. in the environment')
  or show_state($pnode, $bunce, 'proxy');
my @via_proxy = @{ proxy_lines() };
@via_proxy = @via_proxy[ $proxy_seen .. $#via_proxy ];
is(scalar @via_proxy, 0, 'the fake proxy saw no connection');
note("proxy: $_") for @via_proxy;
is(scalar(grep { /x-authorization=yes|key=yes/ } @via_proxy), 0, 'in particular no X-Authorization, no key');
ok(wait_sql($pnode, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 5), 'outbox empty');
is(scalar(grep { /terminated by signal/ } split /\n/, log_since($pnode, 0)), 0,
	'proxy node: no "terminated by signal" in the log');
$pnode->stop;
$proxy_seen = @{ proxy_lines() };

# ---- the node for the rest, with no proxy in its environment ----------------------------------

$bunce->reset;
$bunce->config(api_key => $conf_key);
my $node = bunce_node('key', $bunce, key => $conf_key,
	conf => "bunce.rate_limit = 0\nbunce.request_timeout = '2s'\n");

sub show { show_state($node, $bunce, @_); note('proxy: ' . join(' | ', @{ proxy_lines() })); }

# Makes sure the worker has read the configuration as it is now: a reload that disables
# delivery, seen by the worker, then one that enables it again.
sub sync_worker
{
	$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
	$node->reload;
	my $ok = wait_sql($node, 'SELECT state FROM bunce.status', 'disabled');
	$node->append_conf('postgresql.conf', "bunce.enabled = on\n");
	$node->reload;
	$ok &&= wait_sql($node, "SELECT state <> 'disabled' FROM bunce.status", 't');
	return $ok;
}

sub delivered_ns
{
	my ($since) = @_;
	return sorted_uniq(map { $_->{json}{payload}{n} }
		  @{ requests_where($bunce, sub { ($_[0]{status} // 0) == 200 && $_[0]{auth_ok} }, $since) });
}

my $seq;

# ---- 3b. hosts that only look like loopback ---------------------------------------------------

for my $host ('127.0.0.1.2.3', '127.0.0.1.nip.io', '0x7f.1', '127.256.0.1')
{
	# The fake proxy's port: if anything connects (0x7f.1 is 127.0.0.1 to inet_aton), it is seen.
	my $url = "http://$host:$proxy_port/v1";
	$node->append_conf('postgresql.conf', "bunce.api_url = '$url'\n");
	ok(sync_worker(), "api_url $url: the worker read it");
	ok( wait_sql($node,
			"SELECT state = 'paused' AND paused_reason ~* '(http|loopback)' FROM bunce.status", 't',
			timeout => 10),
		"api_url $url: not taken for loopback: paused, the reason says why")
	  or show("api_url $host");
	$seq = $bunce->stats->{received};
	$node->safe_psql('postgres', enqueue_sql(10, tag => "lookalike $host"));
	my $sent = wait_for('anything sent', sub {
		$bunce->stats->{received} > $seq || @{ proxy_lines() } > $proxy_seen
	}, timeout => 2, quiet => 1);
	ok(!$sent, "api_url $url: nothing sent anywhere (watched 2 s)");
	my @p = @{ proxy_lines() };
	note("proxy: $_") for @p[ $proxy_seen .. $#p ];
	$proxy_seen = @{ proxy_lines() };
}
my $url = $bunce->url;
$node->append_conf('postgresql.conf', "bunce.api_url = '$url'\n");
ok(sync_worker(), 'api_url back to the stand-in');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'the events held back are delivered to the stand-in') or show('lookalikes');
is(scalar(@{ proxy_lines() }) - $proxy_seen, 0, 'still nothing through the proxy');

# ---- 4a. per-database, per-role and session settings of the key ------------------------------

$node->safe_psql('postgres', "CREATE ROLE someone LOGIN;\nCREATE ROLE bob LOGIN;\n");

# Runs $sql with the statement itself kept out of the log (log_statement = all in TAP
# nodes; an ERROR's STATEMENT line), so that what is checked is what bunce logs.
sub try_sql
{
	my ($sql, %opt) = @_;
	my ($out, $err) = ('', '');
	my $pre = $opt{user} ? '' : "SET log_statement = 'none';\nSET log_min_error_statement = panic;\n";
	my $rc = $node->psql('postgres', "\\set VERBOSITY verbose\n$pre$sql",
		stdout => \$out, stderr => \$err, on_error_stop => 1,
		extra_params => $opt{user} ? [ '-U', $opt{user} ] : []);
	my ($state) = $err =~ /(?:ERROR|FATAL):\s+([0-9A-Z]{5}):/;
	return { rc => $rc, out => $out, err => $err, state => $state // '' };
}

my $log_off = log_offset($node);
for my $case (
	[ 'ALTER DATABASE postgres SET', "ALTER DATABASE postgres SET bunce.api_key = '$db_key'", $db_key ],
	[ 'ALTER ROLE someone SET', "ALTER ROLE someone SET bunce.api_key = '$role_key'", $role_key ],
	[ 'ALTER ROLE someone IN DATABASE postgres SET',
		"ALTER ROLE someone IN DATABASE postgres SET bunce.api_key = '$role_key'", $role_key ],
	[ 'ALTER ROLE ALL SET', "ALTER ROLE ALL SET bunce.api_key = '$role_key'", $role_key ])
{
	my ($what, $sql, $k) = @$case;
	my $r = try_sql($sql);
	is($r->{state}, '42501', "$what bunce.api_key: refused, 42501")
	  or note('rc ' . $r->{rc} . ', err: ' . redact($r->{err}));
	ok(index($r->{err}, $k) < 0, "$what: the key is not in the error");
}
my $settings = $node->safe_psql('postgres',
	"SELECT coalesce(string_agg(array_to_string(setconfig, ' '), ' '), '') FROM pg_db_role_setting");
ok(index($settings, 'sk_test_secret') < 0 && $settings !~ /bunce\.api_key/,
	'pg_db_role_setting holds no bunce.api_key') or note('pg_db_role_setting: ' . redact($settings));
# Whatever got in (on code that let it), out again, without printing it.
$node->psql('postgres', "RESET log_statement;\nALTER DATABASE postgres RESET bunce.api_key;\n"
	  . "ALTER ROLE someone RESET bunce.api_key;\nALTER ROLE someone IN DATABASE postgres RESET bunce.api_key;\n"
	  . "ALTER ROLE ALL RESET bunce.api_key;\n");

my $r = try_sql("SET bunce.api_key = '$set_key'");
isnt($r->{state}, '', 'SET bunce.api_key in a session fails') or note('out: ' . redact($r->{out}));
ok(index($r->{err}, $set_key) < 0, 'SET: the key is not in the error');
$r = try_sql("SELECT set_config('bunce.api_key', '$set_key', false)");
isnt($r->{state}, '', 'set_config(\'bunce.api_key\', ...) in a session fails');

# A non-superuser reads neither the key nor the key file's path.
for my $name ('bunce.api_key', 'bunce.api_key_file')
{
	$r = try_sql("SHOW $name", user => 'bob');
	is($r->{state}, '42501', "bob: SHOW $name is refused (42501)") or note(redact($r->{err} . $r->{out}));
	$r = try_sql("SELECT current_setting('$name')", user => 'bob');
	is($r->{state}, '42501', "bob: current_setting('$name') is refused (42501)") or note(redact($r->{err} . $r->{out}));
}
$r = try_sql("SELECT count(*) FROM pg_settings WHERE name IN ('bunce.api_key', 'bunce.api_key_file')", user => 'bob');
is($r->{out}, '0', 'bob: pg_settings lists neither');
$r = try_sql("SELECT current_setting('bunce.api_key_file')");
is($r->{state}, '', 'sanity: bunce.api_key_file exists (a superuser reads it)') or note(redact($r->{err}));

my $log = log_since($node, $log_off);
ok(index($log, 'sk_test_secret') < 0, 'none of the refused keys is in the server log');

# ---- 4b. bunce.api_key_file ------------------------------------------------------------------

my $key_file = "$dir/bunce.key";
sub write_key
{
	my ($key, $mode) = @_;
	my $tmp = "$key_file.tmp";
	open my $fh, '>', $tmp or die "$tmp: $!";
	print $fh "  $key  \nthe second line is not the key\n";
	close $fh;
	chmod $mode, $tmp;
	rename $tmp, $key_file or die "rename: $!";
}

# The file, mode 0600: its key, not bunce.api_key's, is sent.
write_key($fkey1, 0600);
$bunce->config(api_key => $fkey1);
$node->append_conf('postgresql.conf', "bunce.api_key_file = '$key_file'\n");
ok(sync_worker(), 'api_key_file set');
is($node->safe_psql('postgres', "SELECT current_setting('bunce.api_key_file', true)"), $key_file,
	'bunce.api_key_file is the path');
$seq = $bunce->stats->{received};
$node->safe_psql('postgres', enqueue_sql([ 21, 22 ], tag => 'file1'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'with bunce.api_key_file (0600), the events were delivered') or show('key file');
is_deeply(delivered_ns($seq), [ 21, 22 ], 'with the key from the file (trimmed, first line), over bunce.api_key');

# Rotation: a new key in the file, a reload.
write_key($fkey2, 0600);
$bunce->config(api_key => $fkey2);
ok(sync_worker(), 'reloaded after rotating the key in the file');
$seq = $bunce->stats->{received};
$node->safe_psql('postgres', enqueue_sql([ 23, 24 ], tag => 'file2'));
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'after the rotation, the events were delivered') or show('rotation');
is_deeply(delivered_ns($seq), [ 23, 24 ], 'with the new key from the file');

# Mode 0644: refused, paused, nothing sent.
write_key($fkey3, 0644);
$bunce->config(api_key => $fkey3);    # so that nothing but the mode can be the reason
ok(sync_worker(), 'reloaded with the key file readable by others (0644)');
ok( wait_sql($node,
		"SELECT state = 'paused' AND paused_reason ~ 'bunce\\.api_key_file' "
		  . "AND paused_reason ~* '(permission|mode|0644|readable|group|other users|others|chmod|accessible)' FROM bunce.status", 't',
		timeout => 10),
	'0644: paused, the reason names bunce.api_key_file and its permissions')
  or note('bunce.status: ' . redact(sql_value($node, 'SELECT row_to_json(s) FROM bunce.status s')));
$seq = $bunce->stats->{received};
$node->safe_psql('postgres', enqueue_sql(25, tag => 'file3'));
ok(!wait_for('a request', sub { $bunce->stats->{received} > $seq }, timeout => 2, quiet => 1),
	'0644: nothing sent (watched 2 s)');

# A missing file: paused.
$node->append_conf('postgresql.conf', "bunce.api_key_file = '$dir/no-such.key'\n");
ok(sync_worker(), 'reloaded with a missing key file');
ok( wait_sql($node, "SELECT state = 'paused' AND paused_reason ~ 'bunce\\.api_key_file' FROM bunce.status", 't',
		timeout => 10),
	'missing file: paused, the reason names bunce.api_key_file')
  or note('bunce.status: ' . redact(sql_value($node, 'SELECT row_to_json(s) FROM bunce.status s')));
ok(!wait_for('a request', sub { $bunce->stats->{received} > $seq }, timeout => 2, quiet => 1),
	'missing file: nothing sent (watched 2 s)');

# No file: bunce.api_key again.
$bunce->config(api_key => $conf_key);
$node->append_conf('postgresql.conf', "bunce.api_key_file = ''\n");
ok(sync_worker(), 'reloaded without a key file');
ok(wait_sql($node, 'SELECT count(*) FROM bunce.outbox', '0', timeout => 15),
	'without the file, bunce.api_key is used again and the held event is delivered') or show('no file');

# ---- nowhere to be read -----------------------------------------------------------------------

$log = log_since($node, 0);
is(scalar(grep { index($log, $_) >= 0 } @keys), 0, 'no key appears anywhere in the server log');
my $status = sql_value($node, 'SELECT row_to_json(s) FROM bunce.status s');
ok(index($status, 'sk_test_secret') < 0, 'nor in bunce.status');
my $recorded = join "\n", map { JSON::PP->new->canonical->encode($_) } @{ $bunce->requests(0) };
ok(index($recorded, 'sk_test_secret') < 0, 'nor in what the stand-in recorded');
is(scalar(@{ proxy_lines() }) - 1, 0, 'the fake proxy saw nothing but the sanity request all along');
note("proxy: $_") for @{ proxy_lines() };
my $crashes = grep { /terminated by signal/ } split /\n/, $log;
is($crashes, 0, 'no "terminated by signal" in the server log');

$node->stop;
$bunce->stop;
done_testing();
