# A LATIN1 database: text reaches Bunce as the same characters in UTF-8, from the function and
# from the trigger alike, and payload rules (emails) read characters, not bytes.
use strict;
use warnings;
use utf8;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BunceTest;

my $bunce = BunceTest::Standin->start(rate_limit => 0);
my $node  = bunce_node('latin', $bunce, no_extension => 1,
	conf => "bunce.database = 'latin'\nbunce.rate_limit = 0\n");
$node->safe_psql('postgres',
	"CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
$node->safe_psql('latin', 'CREATE EXTENSION bunce');
$node->reload;
ok(wait_sql($node, 'SELECT state FROM bunce.status', 'running', db => 'latin'),
	'the worker serves the LATIN1 database');

# psql sends UTF-8; the server converts to LATIN1 and back.
my $sql = <<'EOS';
SET client_encoding = 'UTF8';
SELECT bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
    jsonb_build_object('email', 'zoe@example.com', 'n', 1, 'city', 'Zürich', 'note', 'café ½ déjà',
                       'at', '2024-05-01 10:00:00+02'));
CREATE TABLE people (id int, email text, name text, city text);
CREATE TRIGGER people_ins AFTER INSERT ON people FOR EACH ROW
    EXECUTE FUNCTION bunce_trigger('9bb6215c-e2b1-4e51-abff-3a96ca185088',
        '{"customer": {"email": "email", "first_name": "name"}, "n": "id", "city": "city"}');
INSERT INTO people VALUES (2, 'noel@example.com', 'Noël', 'Göteborg');
EOS
my ($rc, $out, $err) = $node->psql('latin', $sql);
is($rc, 0, 'non-ASCII payloads are accepted in a LATIN1 database (function and trigger)')
  or diag($err);

ok(wait_for('2 delivered', sub { $bunce->stats->{delivered} >= 2 }), 'both delivered')
  or show_state($node, $bunce);
my %by_n = map { ($_->{json}{payload}{n} // '') => $_->{json}{payload} } @{ $bunce->requests };
is($by_n{1}{city}, 'Zürich', 'function: the text arrives as the same characters (UTF-8 on the wire)');
is($by_n{1}{note}, 'café ½ déjà', 'function: every LATIN1 character survives');
is($by_n{1}{at}, '2024-05-01T08:00:00Z', 'function: still normalised');
is($by_n{2}{customer}{first_name}, 'Noël', 'trigger: the customer name arrives in UTF-8');
is($by_n{2}{city}, 'Göteborg', 'trigger: a parameter arrives in UTF-8');
my @bad = grep { !$_->{json} } @{ $bunce->requests };
is(scalar @bad, 0, 'every request body was valid UTF-8 JSON');

# An address with a LATIN1 no-break space (U+00A0) is refused, as Bunce would.
($rc, $out, $err) = $node->psql('latin', "SET client_encoding = 'UTF8'; SELECT bunce_trigger("
	  . "'9bb6215c-e2b1-4e51-abff-3a96ca185088', jsonb_build_object('email', E'zoe\\u00a0x\@example.com'))");
like($err, qr/not a well-formed email address/, 'an email with a no-break space is refused');

$node->stop;
$bunce->stop;
done_testing();
