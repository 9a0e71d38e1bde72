# Everything committed goes out without help from other traffic: COMMIT PREPARED, rows that
# arrive without bunce_trigger (a restore, a repair by hand), claims left by an interrupted
# attempt; and bunce.status's counters converge to the table by themselves, never negative.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('nowake', $bunce,
	conf => "bunce.rate_limit = 0\nmax_prepared_transactions = 4\n");

sub delivered_ns { return sorted_uniq(@{ payload_ns($bunce->requests) }); }

sub counters_match
{
	return wait_sql($node,
		"SELECT (SELECT queued FROM bunce.status) = (SELECT count(*) FROM bunce.outbox) "
		  . "AND (SELECT queued >= 0 AND due_now >= 0 AND waiting_retry >= 0 FROM bunce.status)",
		't', timeout => 15);
}

# ---- 2PC: nothing wakes the worker at COMMIT PREPARED ------------------------------------------
$node->safe_psql('postgres',
	"BEGIN;\n" . enqueue_sql([ 1, 2 ], tag => '2pc') . "PREPARE TRANSACTION 'bunce_2pc';");
is($node->safe_psql('postgres', 'SELECT count(*) FROM bunce.outbox'), '0',
	'2PC: prepared, not yet committed: nothing in the outbox');
$node->safe_psql('postgres', "COMMIT PREPARED 'bunce_2pc'");
ok(wait_for('the prepared events delivered', sub { "@{ delivered_ns() }" eq '1 2' }, timeout => 15),
	'2PC: both events delivered after COMMIT PREPARED, with no other commit to wake the worker')
  or show_state($node, $bunce, '2pc');
ok(counters_match(), '2PC: bunce.status.queued converges to the table and is not negative')
  or show_state($node, $bunce);

# A prepared transaction rolled back sends nothing.
$node->safe_psql('postgres',
	"BEGIN;\n" . enqueue_sql([3], tag => '2pc') . "PREPARE TRANSACTION 'bunce_2pc_rb';");
$node->safe_psql('postgres', "ROLLBACK PREPARED 'bunce_2pc_rb'");

# ---- a row written into the outbox by hand (as a repair or pg_restore's data would) -------------
$node->safe_psql('postgres', q{
    INSERT INTO bunce.outbox (event_id, payload)
    VALUES ('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "u4@example.com", "n": 4}')});
ok(wait_for('the hand-written row delivered', sub { "@{ delivered_ns() }" eq '1 2 4' }, timeout => 15),
	'a row inserted into bunce.outbox without bunce_trigger is delivered by itself')
  or show_state($node, $bunce, 'by hand');
is_deeply(delivered_ns(), [ 1, 2, 4 ], 'the rolled-back prepared event was never sent');

# ---- an old claim: a row restored (or left) with sending_since set -----------------------------
my $dup_before = $node->safe_psql('postgres', 'SELECT possibly_duplicated FROM bunce.status');
$node->safe_psql('postgres', q{
    INSERT INTO bunce.outbox (event_id, payload, sending_since, attempts)
    VALUES ('9bb6215c-e2b1-4e51-abff-3a96ca185088', '{"email": "u5@example.com", "n": 5}',
            now() - interval '1 hour', 1)});
my $worker = worker_pid($node);
ok(wait_for('the old claim delivered', sub { "@{ delivered_ns() }" eq '1 2 4 5' }, timeout => 20),
	'an old claim is sent again without a restart of the worker')
  or show_state($node, $bunce, 'old claim');
is(worker_pid($node), $worker, '... by the same worker');
ok(wait_sql($node, 'SELECT possibly_duplicated FROM bunce.status', $dup_before + 1),
	'... counted as a possible duplicate');
my ($req5) = grep { ($_->{json}{payload}{n} // 0) == 5 } @{ $bunce->requests };
ok($req5, 'the re-sent event reached Bunce');

# ---- DROP EXTENSION + CREATE EXTENSION with events pending -------------------------------------
$node->append_conf('postgresql.conf', "bunce.enabled = off\n");
$node->reload;
wait_sql($node, 'SELECT state FROM bunce.status', 'disabled');
$node->safe_psql('postgres', enqueue_sql([ 6, 7, 8 ], tag => 'drop'));
$node->safe_psql('postgres', 'DROP EXTENSION bunce; CREATE EXTENSION bunce;');
$node->safe_psql('postgres', enqueue_sql([ 9, 10 ], tag => 'recreated'));
ok(counters_match(), 'after DROP + CREATE EXTENSION, queued converges to the new table (2)')
  or show_state($node, $bunce);
is($node->safe_psql('postgres', 'SELECT queued FROM bunce.status'), '2', 'queued is 2');
$node->append_conf('postgresql.conf', "bunce.enabled = on\n");
$node->reload;
ok(wait_for('the recreated events delivered', sub { "@{ delivered_ns() }" eq '1 2 4 5 9 10' }, timeout => 20),
	'the events of the recreated extension are delivered')
  or show_state($node, $bunce, 'recreated');
ok(counters_match(), 'and the counters agree with the (empty) table');
is($bunce->stats->{duplicates}, 0, 'no event was sent twice');

$node->stop;
$bunce->stop;
done_testing();
