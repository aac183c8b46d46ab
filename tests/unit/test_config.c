/*
 * test_config.c - replicator/topic_config.c (defaults, overlay, logstore
 * mapping) and fs/config.c (node configuration file, .config parse, check and
 * render). Every refusal is checked by its exact message, line number
 * included.
 */
#include "../../fs/config.h"
#include "../../logstore/log.h"
#include "unit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

static int same_values(const struct topic_config *a, const struct topic_config *b)
{
	return a->partitions == b->partitions && a->replication == b->replication &&
	       a->min_insync == b->min_insync && a->acks == b->acks &&
	       a->retention_ms == b->retention_ms &&
	       a->retention_bytes == b->retention_bytes &&
	       a->segment_bytes == b->segment_bytes && a->cleanup == b->cleanup &&
	       a->compression == b->compression &&
	       a->compression_level == b->compression_level &&
	       a->key_separator == b->key_separator &&
	       a->max_record_bytes == b->max_record_bytes;
}

static int parse(const char *doc, struct topic_config *tc, uint32_t *cleared,
                 char *err, size_t errlen)
{
	return topic_config_parse(doc, strlen(doc), tc, cleared, err, errlen);
}

/* Parses doc and expects refusal with exactly msg. */
static int refused_with(const char *doc, const char *msg)
{
	struct topic_config tc;
	uint32_t cl;
	char err[512] = "";
	int rc = parse(doc, &tc, &cl, err, sizeof(err));
	if (rc != -EINVAL || strcmp(err, msg) != 0) {
		fprintf(stderr, "  doc:  %s\n  want: %s\n  got:  rc %d, %s\n", doc, msg, rc, err);
		return 0;
	}
	return 1;
}

/* Writes text to name in this test run's directory (one for the run:
 * unit_tmpdir() hands out a limited number). */
static const char *write_file(const char *name, const char *text)
{
	static const char *dir;
	static char path[512];
	if (!dir)
		dir = unit_tmpdir();
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (!f)
		abort();
	fputs(text, f);
	fclose(f);
	return path;
}

/* Loads text as a node config file and expects refusal "PATH:msg" where msg
 * starts with the line number. */
static int node_refused_with(const char *text, const char *msg)
{
	struct node_config c;
	char err[1024] = "", want[1024];
	const char *path = write_file("node.yaml", text);
	int rc = node_config_load(path, &c, err, sizeof(err));
	snprintf(want, sizeof(want), "%s:%s", path, msg);
	if (rc != -EINVAL || strcmp(err, want) != 0) {
		fprintf(stderr, "  file: %s\n  want: %s\n  got:  rc %d, %s\n", text, want, rc,
		        err);
		return 0;
	}
	return 1;
}

/* ---- topic_config.c --------------------------------------------------- */

/* The built-in defaults are the ones topic_config.h documents. */
static void test_builtin_defaults(void)
{
	struct topic_config t;
	memset(&t, 0xab, sizeof(t));
	topic_config_builtin(&t);
	CHECK_EQ_INT(t.partitions, 1);
	CHECK_EQ_INT(t.replication, 1);
	CHECK_EQ_INT(t.min_insync, 1);
	CHECK_EQ_INT(t.acks, REP_ACKS_ALL);
	CHECK_EQ_INT(t.retention_ms, -1);
	CHECK_EQ_INT(t.retention_bytes, -1);
	CHECK_EQ_INT(t.segment_bytes, 1ll << 30);
	CHECK_EQ_INT(t.cleanup, LS_CLEANUP_DELETE);
	CHECK_EQ_INT(t.compression, LS_CODEC_ZSTD);
	CHECK_EQ_INT(t.compression_level, 1);
	CHECK_EQ_INT(t.key_separator, 0);
	CHECK_EQ_INT(t.max_record_bytes, 1 << 20);
	CHECK_EQ_INT(t.set_mask, 0);
}

/* Every key has its YAML name, and names map back to keys. */
static void test_key_names(void)
{
	const char *names[TC_NKEYS] = {
		"partitions", "replication", "min_insync", "acks", "retention_ms",
		"retention_bytes", "segment_bytes", "cleanup", "compression",
		"compression_level", "key_separator", "max_record_bytes",
	};
	for (int k = 0; k < TC_NKEYS; k++) {
		CHECK(strcmp(topic_config_key_name((enum tc_key)k), names[k]) == 0);
		CHECK_EQ_INT(topic_config_key_from_name(names[k]), k);
	}
	CHECK_EQ_INT(topic_config_key_from_name("Partitions"), -1);
	CHECK_EQ_INT(topic_config_key_from_name(""), -1);
	CHECK(strcmp(topic_config_key_name(TC_NKEYS), "?") == 0);
}

/* effective = defaults with exactly the overridden keys replaced. */
static void test_effective_overlay(void)
{
	struct topic_config d, o, e;
	topic_config_builtin(&d);
	d.partitions = 3;
	d.key_separator = '\t';
	d.set_mask = 0xfff;
	topic_config_builtin(&o);
	o.partitions = 8;          /* overridden */
	o.retention_ms = 1000;     /* not in set_mask: ignored */
	o.key_separator = ',';     /* overridden */
	o.set_mask = (1u << TC_PARTITIONS) | (1u << TC_KEY_SEPARATOR);
	topic_config_effective(&d, &o, &e);
	CHECK_EQ_INT(e.partitions, 8);
	CHECK_EQ_INT(e.key_separator, ',');
	CHECK_EQ_INT(e.retention_ms, -1);
	CHECK_EQ_INT(e.segment_bytes, 1ll << 30);
	CHECK_EQ_INT(e.set_mask, o.set_mask);
	/* in place: effective may alias defaults */
	topic_config_effective(&d, &o, &d);
	CHECK(same_values(&d, &e));
}

/* The logstore settings come from the topic's. */
static void test_to_ls(void)
{
	struct topic_config t;
	struct ls_config l;
	topic_config_builtin(&t);
	t.segment_bytes = 4096;
	t.retention_ms = 60000;
	t.retention_bytes = 1 << 20;
	t.compression = LS_CODEC_NONE;
	t.compression_level = 7;
	t.cleanup = LS_CLEANUP_COMPACT;
	topic_config_to_ls(&t, &l);
	CHECK_EQ_INT(l.segment_bytes, 4096);
	CHECK_EQ_INT(l.retention_ms, 60000);
	CHECK_EQ_INT(l.retention_bytes, 1 << 20);
	CHECK_EQ_INT(l.compression, LS_CODEC_NONE);
	CHECK_EQ_INT(l.compression_level, 7);
	CHECK_EQ_INT(l.cleanup, LS_CLEANUP_COMPACT);
}

/* ---- topic_config_parse ----------------------------------------------- */

/* Every key with a non-default value is set and marked in set_mask. */
static void test_parse_every_key(void)
{
	struct topic_config t;
	uint32_t cl = 123;
	char err[256] = "";
	const char *doc = "partitions: 6\n"
	                  "replication: 3\n"
	                  "min_insync: 2\n"
	                  "acks: leader\n"
	                  "retention_ms: 604800000\n"
	                  "retention_bytes: 9223372036854775807\n"
	                  "segment_bytes: 1024\n"
	                  "cleanup: compact\n"
	                  "compression: none\n"
	                  "compression_level: -5\n"
	                  "key_separator: \"\\t\"\n"
	                  "max_record_bytes: 67108864\n";
	CHECK_EQ_INT(parse(doc, &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(t.partitions, 6);
	CHECK_EQ_INT(t.replication, 3);
	CHECK_EQ_INT(t.min_insync, 2);
	CHECK_EQ_INT(t.acks, REP_ACKS_LEADER);
	CHECK_EQ_INT(t.retention_ms, 604800000);
	CHECK(t.retention_bytes == INT64_MAX);
	CHECK_EQ_INT(t.segment_bytes, 1024);
	CHECK_EQ_INT(t.cleanup, LS_CLEANUP_COMPACT);
	CHECK_EQ_INT(t.compression, LS_CODEC_NONE);
	CHECK_EQ_INT(t.compression_level, -5);
	CHECK_EQ_INT(t.key_separator, '\t');
	CHECK_EQ_INT(t.max_record_bytes, 67108864);
	CHECK_EQ_INT(t.set_mask, (1u << TC_NKEYS) - 1);
	CHECK_EQ_INT(cl, 0);

	/* the other enum values, -1 for both retentions, flow style, quoting */
	CHECK_EQ_INT(parse("{acks: 'all', cleanup: \"delete\", compression: zstd, "
	                   "retention_ms: -1, retention_bytes: -1, retention_ms: 5}",
	                   &t, &cl, err, sizeof(err)), -EINVAL);
	CHECK_EQ_INT(parse("{acks: 'all', cleanup: \"delete\", compression: zstd, "
	                   "retention_ms: -1, retention_bytes: -1}",
	                   &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(t.acks, REP_ACKS_ALL);
	CHECK_EQ_INT(t.cleanup, LS_CLEANUP_DELETE);
	CHECK_EQ_INT(t.compression, LS_CODEC_ZSTD);
	CHECK_EQ_INT(t.retention_ms, -1);
	CHECK_EQ_INT(t.retention_bytes, -1);
	CHECK_EQ_INT(t.set_mask, (1u << TC_ACKS) | (1u << TC_CLEANUP) |
	             (1u << TC_COMPRESSION) | (1u << TC_RETENTION_MS) |
	             (1u << TC_RETENTION_BYTES));
}

/* `key: ~`, `key: null` and `key:` clear the key; a quoted "~" does not. */
static void test_parse_null_clears(void)
{
	struct topic_config t;
	uint32_t cl;
	char err[256] = "";
	CHECK_EQ_INT(parse("partitions: ~\nacks: null\nkey_separator:\nretention_ms: NULL\n"
	                   "cleanup: Null\nmax_record_bytes: 5",
	                   &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(cl, (1u << TC_PARTITIONS) | (1u << TC_ACKS) | (1u << TC_KEY_SEPARATOR) |
	             (1u << TC_RETENTION_MS) | (1u << TC_CLEANUP));
	CHECK_EQ_INT(t.set_mask, 1u << TC_MAX_RECORD_BYTES);
	CHECK_EQ_INT(t.max_record_bytes, 5);
	/* a quoted tilde is the one-byte string "~" */
	CHECK_EQ_INT(parse("key_separator: \"~\"", &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(t.key_separator, '~');
	CHECK_EQ_INT(cl, 0);
}

/* Empty documents are no change: nothing, comments, a bare '---', a written
 * back file starting with the "# error:" comment. */
static void test_parse_empty_documents(void)
{
	const char *docs[] = {
		"", "\n\n", "# just a comment\n", "# one\n# two", "---\n", "---\n...\n", "~\n",
		"# error: line 3: partitions: cannot shrink from 6 to 3\n",
	};
	struct topic_config t;
	uint32_t cl;
	char err[256];
	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
		cl = 99;
		err[0] = '\0';
		CHECK_EQ_INT(parse(docs[i], &t, &cl, err, sizeof(err)), 0);
		CHECK_EQ_INT(t.set_mask, 0);
		CHECK_EQ_INT(cl, 0);
		CHECK(err[0] == '\0');
	}
	CHECK_EQ_INT(topic_config_parse(NULL, 0, &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(parse("# error: line 1: foo: unknown key\npartitions: 4\n",
	                   &t, &cl, err, sizeof(err)), 0);
	CHECK_EQ_INT(t.partitions, 4);
	CHECK_EQ_INT(t.set_mask, 1u << TC_PARTITIONS);
}

/* key_separator: exactly one byte through YAML escapes; newline and NUL
 * refused; single quotes keep a backslash (and the message says so). */
static void test_parse_key_separator(void)
{
	static const struct {
		const char *doc;
		int byte;
	} ok[] = {
		{ "key_separator: \"\\t\"", '\t' },
		{ "key_separator: \"\\x01\"", 1 },
		{ "key_separator: \"\\u001f\"", 0x1f },
		{ "key_separator: \"\\x7f\"", 0x7f },
		{ "key_separator: \",\"", ',' },
		{ "key_separator: ','", ',' },
		{ "key_separator: \" \"", ' ' },
		{ "key_separator: \"\\\\\"", '\\' },
		{ "key_separator: \"\\\"\"", '"' },
		{ "key_separator: ;", ';' },
		{ "key_separator: '|'", '|' },
		{ "key_separator: \"\\r\"", '\r' },
	};
	struct topic_config t;
	uint32_t cl;
	char err[256];
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		int rc = parse(ok[i].doc, &t, &cl, err, sizeof(err));
		CHECK_EQ_INT(rc, 0);
		if (rc == 0)
			CHECK_EQ_INT((unsigned char)t.key_separator, ok[i].byte);
	}
	CHECK(refused_with("key_separator: \"\\n\"", "line 1: key_separator: a newline or "
	                   "NUL cannot separate a key: records are lines; got '\\n'"));
	CHECK(refused_with("acks: all\nkey_separator: \"\\0\"", "line 2: key_separator: a "
	                   "newline or NUL cannot separate a key: records are lines; got "
	                   "'\\x00'"));
	CHECK(refused_with("key_separator: '\\t'", "line 1: key_separator: must be exactly "
	                   "one byte, got '\\t' (2 bytes; escapes work in double quotes: "
	                   "\"\\t\")"));
	CHECK(refused_with("\n\nkey_separator: \"\"", "line 3: key_separator: must be "
	                   "exactly one byte (e.g. \"\\t\" or \",\"), or ~ for none, got ''"));
	CHECK(refused_with("key_separator: \"::\"", "line 1: key_separator: must be "
	                   "exactly one byte (e.g. \"\\t\" or \",\"), or ~ for none, got '::'"));
	CHECK(refused_with("key_separator: \"\xc3\xa9\"", "line 1: key_separator: must be "
	                   "exactly one byte (e.g. \"\\t\" or \",\"), or ~ for none, got "
	                   "'\xc3\xa9'"));
	CHECK(refused_with("key_separator: [a]", "line 1: key_separator: must be exactly "
	                   "one byte (e.g. \"\\t\" or \",\"), or ~ for none, got a list"));
}

/* Each refusal names the key, what is allowed and the line. */
static void test_parse_refusals(void)
{
	static const struct {
		const char *doc, *msg;
	} cases[] = {
		{ "partitions: 6\nfoo: 1\n",
		  "line 2: foo: unknown key (allowed: partitions, replication, min_insync, acks, "
		  "retention_ms, retention_bytes, segment_bytes, cleanup, compression, "
		  "compression_level, key_separator, max_record_bytes)" },
		{ "partitions: 1\nacks: all\n\npartitions: 2\n",
		  "line 4: partitions: given twice (first at line 1)" },
		{ "partitions: 0", "line 1: partitions: must be an integer 1..10000, got '0'" },
		{ "# c\npartitions: 10001",
		  "line 2: partitions: must be an integer 1..10000, got '10001'" },
		{ "partitions: six", "line 1: partitions: must be an integer 1..10000, got 'six'" },
		{ "partitions: 007", "line 1: partitions: must be an integer 1..10000, got '007'" },
		{ "partitions: +3", "line 1: partitions: must be an integer 1..10000, got '+3'" },
		{ "partitions: 3.0", "line 1: partitions: must be an integer 1..10000, got '3.0'" },
		{ "partitions: 0x10", "line 1: partitions: must be an integer 1..10000, got '0x10'" },
		{ "partitions: [1, 2]", "line 1: partitions: must be an integer 1..10000, got a list" },
		{ "partitions:\n  a: 1", "line 2: partitions: must be an integer 1..10000, got a mapping" },
		{ "replication: 65", "line 1: replication: must be an integer 1..64, got '65'" },
		{ "min_insync: 0", "line 1: min_insync: must be an integer 1..64, got '0'" },
		{ "acks: 1", "line 1: acks: must be leader or all, got '1'" },
		{ "acks: ALL", "line 1: acks: must be leader or all, got 'ALL'" },
		{ "retention_ms: -2", "line 1: retention_ms: must be -1 (forever) or an integer "
		  ">= 0 (milliseconds), got '-2'" },
		{ "retention_ms: 7d", "line 1: retention_ms: must be -1 (forever) or an integer "
		  ">= 0 (milliseconds), got '7d'" },
		{ "retention_bytes: 9223372036854775808", "line 1: retention_bytes: must be -1 "
		  "(unlimited) or an integer >= 0 (bytes, no units), got '9223372036854775808'" },
		{ "retention_bytes: 1GiB", "line 1: retention_bytes: must be -1 (unlimited) or "
		  "an integer >= 0 (bytes, no units), got '1GiB'" },
		{ "segment_bytes: 1023", "line 1: segment_bytes: must be an integer "
		  "1024..2147483647 (bytes, no units), got '1023'" },
		{ "segment_bytes: 1G", "line 1: segment_bytes: must be an integer "
		  "1024..2147483647 (bytes, no units), got '1G'" },
		{ "cleanup: compact,delete", "line 1: cleanup: must be delete or compact, got "
		  "'compact,delete'" },
		{ "compression: gzip", "line 1: compression: must be zstd or none, got 'gzip'" },
		{ "compression_level: 0", "line 1: compression_level: must be an integer 1..19 "
		  "(or -5..-1 for zstd's fast levels), got '0'" },
		{ "compression_level: 20", "line 1: compression_level: must be an integer 1..19 "
		  "(or -5..-1 for zstd's fast levels), got '20'" },
		{ "max_record_bytes: 0", "line 1: max_record_bytes: must be an integer "
		  "1..67108864 (bytes, no units), got '0'" },
		{ "max_record_bytes: 67108865", "line 1: max_record_bytes: must be an integer "
		  "1..67108864 (bytes, no units), got '67108865'" },
		{ "max_record_bytes: 1MiB", "line 1: max_record_bytes: must be an integer "
		  "1..67108864 (bytes, no units), got '1MiB'" },
		{ "partitions: \"12345678901234567890123456789012345678901234567890\"",
		  "line 1: partitions: must be an integer 1..10000, got "
		  "'1234567890123456789012345678901234567890...'" },
		/* not a mapping */
		{ "- partitions: 3", "line 1: must be a YAML mapping of 'key: value' lines, "
		  "like 'partitions: 6'" },
		{ "\npartitions 6\n", "line 2: must be a YAML mapping of 'key: value' lines, "
		  "like 'partitions: 6'" },
		{ "? [a]\n: 1", "line 1: keys must be plain names, got a list" },
		/* syntax */
		{ "partitions: 3\nacks: [all\n", "line 2: YAML syntax error: did not find "
		  "expected ',' or ']' (while parsing a flow sequence)" },
		{ "partitions: 3\n  acks: all\n", "line 2: YAML syntax error: mapping values are "
		  "not allowed in this context" },
		{ "\tpartitions: 3\n", "line 1: YAML syntax error: found character that cannot "
		  "start any token (while scanning for the next token)" },
		{ "partitions: 3\nacks: \"all", "line 2: YAML syntax error: found unexpected end "
		  "of stream (while scanning a quoted scalar)" },
		{ "partitions: 3\n\xff\n", "line 2: YAML syntax error: invalid leading UTF-8 octet" },
		{ "partitions: 3\n---\npartitions: 4\n",
		  "line 2: only one YAML document is allowed (found a second '---')" },
		{ "partitions: *a\n", "line 1: YAML syntax error: found undefined alias" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK(refused_with(cases[i].doc, cases[i].msg));
}

/* A refused document leaves the outputs untouched. */
static void test_parse_nothing_applied(void)
{
	struct topic_config t, before;
	uint32_t cl = 77;
	char err[256];
	topic_config_builtin(&t);
	t.partitions = 42;
	before = t;
	CHECK_EQ_INT(parse("partitions: 5\nreplication: ~\nacks: maybe\n", &t, &cl, err,
	                   sizeof(err)), -EINVAL);
	CHECK(memcmp(&t, &before, sizeof(t)) == 0);
	CHECK_EQ_INT(cl, 77);
	/* a tiny error buffer is truncated, never overrun */
	char small[8];
	CHECK_EQ_INT(parse("acks: maybe", &t, &cl, small, sizeof(small)), -EINVAL);
	CHECK(strcmp(small, "line 1:") == 0);
	CHECK_EQ_INT(parse("acks: maybe", &t, &cl, NULL, 0), -EINVAL);
}

/* ---- topic_config_check ----------------------------------------------- */

static void test_check_rules(void)
{
	struct topic_config old, neu;
	char err[256] = "";
	topic_config_builtin(&old);
	old.partitions = 6;
	neu = old;
	CHECK_EQ_INT(topic_config_check(&old, &neu, 1, err, sizeof(err)), 0);
	neu.partitions = 12;
	CHECK_EQ_INT(topic_config_check(&old, &neu, 1, err, sizeof(err)), 0);
	neu.partitions = 3;
	CHECK_EQ_INT(topic_config_check(&old, &neu, 1, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "partitions: cannot shrink from 6 to 3") == 0);
	CHECK_EQ_INT(topic_config_check(NULL, &neu, 1, err, sizeof(err)), 0);

	neu = old;
	neu.replication = 3;
	CHECK_EQ_INT(topic_config_check(&old, &neu, 1, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "replication: 3 exceeds the 1 node(s) up in the cluster") == 0);
	CHECK_EQ_INT(topic_config_check(&old, &neu, 3, err, sizeof(err)), 0);
	neu.min_insync = 3;
	CHECK_EQ_INT(topic_config_check(NULL, &neu, 3, err, sizeof(err)), 0);
	neu.min_insync = 4;
	CHECK_EQ_INT(topic_config_check(NULL, &neu, 5, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "min_insync: 4 exceeds replication 3") == 0);
	neu.min_insync = 1;
	neu.partitions = 0;
	CHECK_EQ_INT(topic_config_check(NULL, &neu, 5, err, sizeof(err)), -EINVAL);
	CHECK(strcmp(err, "partitions: must be at least 1") == 0);
}

/* ---- topic_config_render ---------------------------------------------- */

/* The exact text of the built-in defaults. */
static void test_render_exact(void)
{
	struct topic_config t;
	char buf[1024];
	const char *want = "partitions: 1\n"
	                   "replication: 1\n"
	                   "min_insync: 1\n"
	                   "acks: all\n"
	                   "retention_ms: -1\n"
	                   "retention_bytes: -1\n"
	                   "segment_bytes: 1073741824\n"
	                   "cleanup: delete\n"
	                   "compression: zstd\n"
	                   "compression_level: 1\n"
	                   "key_separator: ~\n"
	                   "max_record_bytes: 1048576\n";
	topic_config_builtin(&t);
	size_t n = topic_config_render(&t, NULL, buf, sizeof(buf));
	CHECK_EQ_INT(n, strlen(want));
	CHECK(strcmp(buf, want) == 0);
	n = topic_config_render(&t, "", buf, sizeof(buf));
	CHECK(strcmp(buf, want) == 0);

	t.key_separator = '\t';
	t.acks = REP_ACKS_LEADER;
	t.cleanup = LS_CLEANUP_COMPACT;
	t.compression = LS_CODEC_NONE;
	topic_config_render(&t, "line 3: partitions: must be\nan integer", buf, sizeof(buf));
	CHECK(strncmp(buf, "# error: line 3: partitions: must be an integer\npartitions: 1\n",
	              62) == 0);
	CHECK(strstr(buf, "\nkey_separator: \"\\t\"\n") != NULL);
	CHECK(strstr(buf, "\nacks: leader\n") != NULL);
	CHECK(strstr(buf, "\ncleanup: compact\n") != NULL);
	CHECK(strstr(buf, "\ncompression: none\n") != NULL);
}

/* Like snprintf: the needed length whatever the buffer, always terminated. */
static void test_render_truncation(void)
{
	struct topic_config t;
	char full[1024], small[10];
	topic_config_builtin(&t);
	size_t n = topic_config_render(&t, "boom", full, sizeof(full));
	memset(small, 'x', sizeof(small));
	CHECK_EQ_INT(topic_config_render(&t, "boom", small, sizeof(small)), n);
	CHECK(strcmp(small, "# error: ") == 0);
	CHECK_EQ_INT(topic_config_render(&t, "boom", NULL, 0), n);
	CHECK_EQ_INT(strlen(full), n);
}

/* Read-modify-write: the rendered text (with or without an error line) parses
 * back to identical values, for every separator byte YAML can carry and for
 * extreme values. */
static void test_render_roundtrip(void)
{
	struct topic_config t, back;
	uint32_t cl;
	char buf[1024], err[256];

	for (int c = 0; c < 128; c++) {
		if (c == '\n')
			continue;
		topic_config_builtin(&t);
		t.key_separator = (char)c;
		t.partitions = 10000;
		t.replication = 64;
		t.min_insync = 64;
		t.acks = c & 1 ? REP_ACKS_LEADER : REP_ACKS_ALL;
		t.retention_ms = c & 2 ? INT64_MAX : -1;
		t.retention_bytes = c & 4 ? 0 : -1;
		t.segment_bytes = c & 8 ? 1024 : 2147483647;
		t.cleanup = c & 16 ? LS_CLEANUP_COMPACT : LS_CLEANUP_DELETE;
		t.compression = c & 32 ? LS_CODEC_NONE : LS_CODEC_ZSTD;
		t.compression_level = c & 64 ? -5 : 19;
		t.max_record_bytes = c & 1 ? 1 : 67108864;
		topic_config_render(&t, c & 1 ? "line 1: bad \"x\": \\t # y" : NULL, buf,
		                    sizeof(buf));
		int rc = topic_config_parse(buf, strlen(buf), &back, &cl, err, sizeof(err));
		CHECK_EQ_INT(rc, 0);
		if (rc != 0) {
			fprintf(stderr, "  byte %d: %s\n%s", c, err, buf);
			continue;
		}
		if (c == 0) {
			/* "~": clears the key (node default), sets nothing */
			CHECK_EQ_INT(cl, 1u << TC_KEY_SEPARATOR);
			CHECK_EQ_INT(back.set_mask, ((1u << TC_NKEYS) - 1) & ~(1u << TC_KEY_SEPARATOR));
			back.key_separator = 0;
		} else {
			CHECK_EQ_INT(cl, 0);
			CHECK_EQ_INT(back.set_mask, (1u << TC_NKEYS) - 1);
		}
		CHECK(same_values(&t, &back));
	}
}

/* ---- node configuration ------------------------------------------------ */

static void test_node_defaults(void)
{
	struct node_config c;
	struct topic_config b;
	node_config_default(&c);
	topic_config_builtin(&b);
	CHECK_EQ_INT(c.id, 1);
	CHECK(strcmp(c.data_dir, "") == 0);
	CHECK(strcmp(c.listen_host, "127.0.0.1") == 0);
	CHECK_EQ_INT(c.listen_port, 7070);
	CHECK(strcmp(c.log_file, "") == 0);
	CHECK_EQ_INT(c.log_level, TFS_LOG_INFO);
	CHECK_EQ_INT(c.nvoters, 0);
	CHECK(same_values(&c.defaults, &b));
	CHECK_EQ_INT(c.group_start, GROUP_START_EARLIEST);
	CHECK_EQ_INT(c.retention_check_ms, 5000);
	CHECK_EQ_INT(c.flush_ms, 1000);
	CHECK_EQ_INT(c.leader_rebalance_ms, 30000);
}

/* An empty file, or one of comments, is all defaults. */
static void test_node_empty_file(void)
{
	const char *texts[] = { "", "# nothing here\n\n", "node:\ncluster:\n# all commented\n" };
	for (size_t i = 0; i < 3; i++) {
		struct node_config c, d;
		char err[256] = "";
		const char *path = write_file("empty.yaml", texts[i]);
		CHECK_EQ_INT(node_config_load(path, &c, err, sizeof(err)), 0);
		node_config_default(&d);
		CHECK(memcmp(&c, &d, sizeof(c)) == 0);
	}
}

/* Every key of the file, as INTERFACE.md shows it and more. */
static void test_node_full(void)
{
	struct node_config c;
	char err[512] = "";
	const char *path = write_file("full.yaml",
		"# node 2 of 3\n"
		"node:\n"
		"  id: 2                       # unique, 1..65535\n"
		"  data_dir: /var/lib/topicfs\n"
		"  listen: 0.0.0.0:7171\n"
		"  log_file: /var/log/topicfs.log\n"
		"  log_level: debug\n"
		"cluster:\n"
		"  voters:\n"
		"    - 1@127.0.0.1:7070\n"
		"    - 2@127.0.0.2:7070\n"
		"    - \"3@127.0.0.3:7070\"\n"
		"  replica_lag_ms: 1500\n"
		"  replica_wait_ms: 2500\n"
		"  node_timeout_ms: 2000\n"
		"  snapshot_entries: 64\n"
		"  leader_rebalance_ms: 0\n"
		"defaults:\n"
		"  partitions: 4\n"
		"  replication: 3\n"
		"  min_insync: 2\n"
		"  key_separator: \"\\t\"\n"
		"  retention_ms: ~\n"
		"groups:\n"
		"  start: latest\n"
		"storage:\n"
		"  flush_ms: 0\n"
		"  retention_check_ms: 250\n");
	CHECK_EQ_INT(node_config_load(path, &c, err, sizeof(err)), 0);
	CHECK(err[0] == '\0');
	CHECK_EQ_INT(c.id, 2);
	CHECK(strcmp(c.data_dir, "/var/lib/topicfs") == 0);
	CHECK(strcmp(c.listen_host, "0.0.0.0") == 0);
	CHECK_EQ_INT(c.listen_port, 7171);
	CHECK(strcmp(c.log_file, "/var/log/topicfs.log") == 0);
	CHECK_EQ_INT(c.log_level, TFS_LOG_DEBUG);
	CHECK_EQ_INT(c.nvoters, 3);
	for (unsigned i = 0; i < 3 && i < c.nvoters; i++) {
		char host[16];
		snprintf(host, sizeof(host), "127.0.0.%u", i + 1);
		CHECK_EQ_INT(c.voters[i].id, i + 1);
		CHECK(strcmp(c.voters[i].host, host) == 0);
		CHECK_EQ_INT(c.voters[i].port, 7070);
	}
	CHECK_EQ_INT(c.defaults.partitions, 4);
	CHECK_EQ_INT(c.defaults.replication, 3);
	CHECK_EQ_INT(c.defaults.min_insync, 2);
	CHECK_EQ_INT(c.defaults.key_separator, '\t');
	CHECK_EQ_INT(c.defaults.retention_ms, -1);     /* ~ = built-in */
	CHECK_EQ_INT(c.defaults.max_record_bytes, 1 << 20);
	CHECK_EQ_INT(c.group_start, GROUP_START_LATEST);
	CHECK_EQ_INT(c.flush_ms, 0);
	CHECK_EQ_INT(c.retention_check_ms, 250);
	CHECK_EQ_INT(c.replica_lag_ms, 1500);
	CHECK_EQ_INT(c.replica_wait_ms, 2500);
	CHECK_EQ_INT(c.node_timeout_ms, 2000);
	CHECK_EQ_INT(c.snapshot_entries, 64);
	CHECK_EQ_INT(c.leader_rebalance_ms, 0);
}

/* Without node.listen, a voter listens on its own voter address. */
static void test_node_listen_from_voters(void)
{
	struct node_config c;
	char err[256] = "";
	const char *path = write_file("n3.yaml", "node: {id: 3}\n"
	                              "cluster: {voters: [1@10.0.0.1:7070, 3@10.0.0.3:7071]}\n");
	CHECK_EQ_INT(node_config_load(path, &c, err, sizeof(err)), 0);
	CHECK(strcmp(c.listen_host, "10.0.0.3") == 0);
	CHECK_EQ_INT(c.listen_port, 7071);
	CHECK_EQ_INT(c.nvoters, 2);
}

/* Each refusal: the file, the line, the key, what is allowed. */
static void test_node_refusals(void)
{
	CHECK(node_refused_with("# c\n\nnode:\n  id: abc\n",
	      "4: node.id: must be an integer 1..65535, got 'abc'"));
	CHECK(node_refused_with("node:\n  id: 0\n",
	      "2: node.id: must be an integer 1..65535, got '0'"));
	CHECK(node_refused_with("node:\n  id: 65536\n",
	      "2: node.id: must be an integer 1..65535, got '65536'"));
	CHECK(node_refused_with("node:\n  id:\n",
	      "2: node.id: must be an integer 1..65535, got nothing"));
	CHECK(node_refused_with("node:\n  id: 1\n  idd: 2\n",
	      "3: node.idd: unknown key (allowed: id, data_dir, listen, log_file, log_level)"));
	CHECK(node_refused_with("nodes:\n  id: 1\n",
	      "1: nodes: unknown key (allowed: node, cluster, defaults, groups, storage)"));
	CHECK(node_refused_with("node:\n  id: 1\n  id: 2\n",
	      "3: node.id: given twice (first at line 2)"));
	CHECK(node_refused_with("node:\n  id: 1\nstorage: {}\nnode:\n  id: 2\n",
	      "4: node: given twice (first at line 1)"));
	CHECK(node_refused_with("node: 3\n",
	      "1: node: must be a mapping with keys id, data_dir, listen, log_file, "
	      "log_level, got '3'"));
	CHECK(node_refused_with("- node\n",
	      "1: the file must be a YAML mapping with sections node:, cluster:, "
	      "defaults:, groups:, storage:"));
	CHECK(node_refused_with("node:\n  data_dir: \"\"\n",
	      "2: node.data_dir: must be a path, got ''"));
	CHECK(node_refused_with("node:\n  log_file: [a]\n",
	      "2: node.log_file: must be a path, got a list"));
	CHECK(node_refused_with("node:\n  listen: localhost:7070\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got 'localhost:7070'"));
	CHECK(node_refused_with("node:\n  listen: 127.0.0.1\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got '127.0.0.1'"));
	CHECK(node_refused_with("node:\n  listen: 127.0.0.256:7070\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got '127.0.0.256:7070'"));
	CHECK(node_refused_with("node:\n  listen: 127.0.0.1:0\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got '127.0.0.1:0'"));
	CHECK(node_refused_with("node:\n  listen: 127.0.0.1:65536\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got '127.0.0.1:65536'"));
	CHECK(node_refused_with("node:\n  listen: \"[::1]:7070\"\n",
	      "2: node.listen: must be A.B.C.D:PORT (a dotted-quad IPv4 address, port "
	      "1..65535), got '[::1]:7070'"));
	CHECK(node_refused_with("node:\n  log_level: verbose\n",
	      "2: node.log_level: must be debug, info, warn or error, got 'verbose'"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 1@127.0.0.1:7070\n"
	                        "    - 2@localhost:7070\n",
	      "4: cluster.voters: each entry must be ID@A.B.C.D:PORT (ID 1..65535, a "
	      "dotted-quad IPv4 address, port 1..65535), got '2@localhost:7070'"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 127.0.0.1:7070\n",
	      "3: cluster.voters: each entry must be ID@A.B.C.D:PORT (ID 1..65535, a "
	      "dotted-quad IPv4 address, port 1..65535), got '127.0.0.1:7070'"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 0@127.0.0.1:7070\n",
	      "3: cluster.voters: each entry must be ID@A.B.C.D:PORT (ID 1..65535, a "
	      "dotted-quad IPv4 address, port 1..65535), got '0@127.0.0.1:7070'"));
	CHECK(node_refused_with("cluster:\n  voters: 1@127.0.0.1:7070\n",
	      "2: cluster.voters: must be a list of ID@A.B.C.D:PORT entries, got "
	      "'1@127.0.0.1:7070'"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 1@127.0.0.1:7070\n"
	                        "    - 1@127.0.0.2:7070\n",
	      "4: cluster.voters: id 1 is listed twice (first at line 3)"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 1@127.0.0.1:7070\n"
	                        "    - 2@127.0.0.1:7070\n",
	      "4: cluster.voters: 127.0.0.1:7070 is listed twice (first at line 3)"));
	CHECK(node_refused_with("node:\n  id: 4\ncluster:\n  voters:\n    - 1@127.0.0.1:7070\n",
	      "2: node.id: 4 is not among cluster.voters; every voter's node.id must be "
	      "listed"));
	CHECK(node_refused_with("cluster:\n  voters:\n    - 2@127.0.0.1:7070\n",
	      "2: node.id: 1 (the default) is not among cluster.voters; every voter's "
	      "node.id must be listed"));
	CHECK(node_refused_with("cluster:\n  members: []\n",
	      "2: cluster.members: unknown key (allowed: voters, replica_lag_ms, "
	      "replica_wait_ms, node_timeout_ms, snapshot_entries, leader_rebalance_ms)"));
	CHECK(node_refused_with("defaults:\n  partitions: 2\n  segment_bytes: 1MiB\n",
	      "3: defaults.segment_bytes: must be an integer 1024..2147483647 (bytes, no "
	      "units), got '1MiB'"));
	CHECK(node_refused_with("defaults:\n  colour: red\n",
	      "2: defaults.colour: unknown key (allowed: partitions, replication, min_insync, "
	      "acks, retention_ms, retention_bytes, segment_bytes, cleanup, compression, "
	      "compression_level, key_separator, max_record_bytes)"));
	CHECK(node_refused_with("defaults: 3\n",
	      "1: defaults: must be a mapping of topic keys (partitions, replication, "
	      "min_insync, acks, retention_ms, retention_bytes, segment_bytes, cleanup, "
	      "compression, compression_level, key_separator, max_record_bytes), got '3'"));
	CHECK(node_refused_with("node:\n  id: 1\ndefaults:\n  partitions: 2\n  replication: 3\n",
	      "5: defaults.replication: 3 exceeds the 1 node(s) up in the cluster"));
	CHECK(node_refused_with("defaults:\n  min_insync: 2\n",
	      "2: defaults.min_insync: 2 exceeds replication 1"));
	CHECK(node_refused_with("groups:\n  start: middle\n",
	      "2: groups.start: must be earliest or latest, got 'middle'"));
	CHECK(node_refused_with("groups:\n  begin: latest\n",
	      "2: groups.begin: unknown key (allowed: start)"));
	CHECK(node_refused_with("cluster:\n  replica_lag_ms: 50\n",
	      "2: cluster.replica_lag_ms: must be an integer 100..3600000 (milliseconds), "
	      "got '50'"));
	CHECK(node_refused_with("cluster:\n  leader_rebalance_ms: 50\n",
	      "2: cluster.leader_rebalance_ms: must be 0 (never) or an integer "
	      "100..86400000 (milliseconds), got '50'"));
	CHECK(node_refused_with("cluster:\n  snapshot_entries: 8\n",
	      "2: cluster.snapshot_entries: must be an integer 16..100000000, got '8'"));
	CHECK(node_refused_with("cluster:\n  node_timeout: 5\n",
	      "2: cluster.node_timeout: unknown key (allowed: voters, replica_lag_ms, "
	      "replica_wait_ms, node_timeout_ms, snapshot_entries, leader_rebalance_ms)"));
	CHECK(node_refused_with("storage:\n  flush_ms: -1\n",
	      "2: storage.flush_ms: must be an integer 0..4294967295 (milliseconds; 0 = "
	      "never), got '-1'"));
	CHECK(node_refused_with("storage:\n  retention_check_ms: 0\n",
	      "2: storage.retention_check_ms: must be an integer 1..4294967295 "
	      "(milliseconds), got '0'"));
	CHECK(node_refused_with("storage:\n  fsync: always\n",
	      "2: storage.fsync: unknown key (allowed: flush_ms, retention_check_ms)"));
	CHECK(node_refused_with("node:\n  id: 1\n data_dir: /x\n",
	      "3: YAML syntax error: did not find expected key (while parsing a block "
	      "mapping)"));
	CHECK(node_refused_with("node:\n  id: [1\n",
	      "2: YAML syntax error: did not find expected ',' or ']' (while parsing a flow "
	      "sequence)"));
	CHECK(node_refused_with("node:\n  id: 1\n---\nnode:\n  id: 2\n",
	      "3: only one YAML document is allowed (found a second '---')"));
}

/* A refused file leaves *out untouched. */
static void test_node_nothing_applied(void)
{
	struct node_config c, before;
	char err[256];
	const char *path = write_file("bad.yaml", "node:\n  id: 7\n  listen: nowhere\n");
	memset(&c, 0x5a, sizeof(c));
	before = c;
	CHECK_EQ_INT(node_config_load(path, &c, err, sizeof(err)), -EINVAL);
	CHECK(memcmp(&c, &before, sizeof(c)) == 0);
}

/* A missing file is -ENOENT with the path in the message. */
static void test_node_unreadable(void)
{
	struct node_config c;
	char err[512] = "", want[400];
	char path[300];
	snprintf(path, sizeof(path), "%s/missing.yaml", unit_tmpdir());
	CHECK_EQ_INT(node_config_load(path, &c, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
	CHECK(strcmp(err, want) == 0);
	/* a directory cannot be read either */
	CHECK(node_config_load(unit_tmpdir(), &c, err, sizeof(err)) < 0);
}

/* The node files in mount-examples/ load as they are (run from the
 * repository root, as `make unit` does). */
static void test_mount_examples_load(void)
{
	static const struct {
		const char *path;
		unsigned id, nvoters;
		const char *listen;
	} ex[] = {
		{ "mount-examples/single-node.yaml", 1, 0, "127.0.0.1" },
		{ "mount-examples/three-nodes/node1.yaml", 1, 3, "127.0.0.1" },
		{ "mount-examples/three-nodes/node2.yaml", 2, 3, "127.0.0.2" },
		{ "mount-examples/three-nodes/node3.yaml", 3, 3, "127.0.0.3" },
	};
	for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
		struct node_config c;
		char err[512] = "";
		int rc = node_config_load(ex[i].path, &c, err, sizeof(err));
		CHECK_EQ_INT(rc, 0);
		if (rc != 0) {
			fprintf(stderr, "  %s\n", err);
			continue;
		}
		CHECK_EQ_INT(c.id, ex[i].id);
		CHECK_EQ_INT(c.nvoters, ex[i].nvoters);
		CHECK(strcmp(c.listen_host, ex[i].listen) == 0);
		CHECK_EQ_INT(c.listen_port, 7070);
	}
}

int main(void)
{
	RUN(test_builtin_defaults);
	RUN(test_key_names);
	RUN(test_effective_overlay);
	RUN(test_to_ls);
	RUN(test_parse_every_key);
	RUN(test_parse_null_clears);
	RUN(test_parse_empty_documents);
	RUN(test_parse_key_separator);
	RUN(test_parse_refusals);
	RUN(test_parse_nothing_applied);
	RUN(test_check_rules);
	RUN(test_render_exact);
	RUN(test_render_truncation);
	RUN(test_render_roundtrip);
	RUN(test_node_defaults);
	RUN(test_node_empty_file);
	RUN(test_node_full);
	RUN(test_node_listen_from_voters);
	RUN(test_node_refusals);
	RUN(test_node_nothing_applied);
	RUN(test_node_unreadable);
	RUN(test_mount_examples_load);
	return unit_report("test_config");
}
