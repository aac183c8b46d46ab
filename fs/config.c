/*
 * config.c - YAML (libyaml, document API) for the node configuration file and
 * for a topic's .config file: strict parsing into plain structs and the
 * rendering of .config.
 *
 * Owns no state: every call parses one document into a local copy and hands
 * it out only when the whole document is valid ("nothing half-applied").
 *
 * Node configuration (INTERFACE.md section 1), all keys optional:
 *
 *     node:      id (1..65535), data_dir, listen (A.B.C.D:PORT), log_file,
 *                log_level (debug|info|warn|error)
 *     cluster:   voters: [ "ID@A.B.C.D:PORT", ... ], replica_lag_ms,
 *                replica_wait_ms, node_timeout_ms, snapshot_entries,
 *                leader_rebalance_ms
 *     defaults:  any .config key (below)
 *     groups:    start (earliest|latest)
 *     storage:   flush_ms, retention_check_ms
 *
 * .config (INTERFACE.md section 8): a mapping of
 *
 *     partitions 1..10000         replication 1..64       min_insync 1..64
 *     acks leader|all             retention_ms -1|>=0     retention_bytes -1|>=0
 *     segment_bytes 1024..2^31-1  cleanup delete|compact  compression zstd|none
 *     compression_level -5..-1|1..19
 *     key_separator: one byte, not newline or NUL ("\t" with YAML escapes)
 *     max_record_bytes 1..67108864
 *
 * Sizes are plain integers (no units). A value of `~`, `null` or nothing
 * clears the key (back to the node default); in the node file's defaults:
 * section it means the built-in value.
 *
 * The cross-key rules (topic_config_check) live in replicator/topic_config.c
 * so the metadata layer applies the same ones.
 *
 * Errors: one message, "FILE:LINE: key: what is allowed, got 'value'" for
 * the node file and "line N: ..." for .config, LINE being 1-based
 * (libyaml's start_mark.line + 1 of the offending node). Every refusal returns
 * -EINVAL (an unreadable node file: -errno).
 *
 * Invariants:
 *  1. Outputs (*out, *changes, *cleared) are written only on success.
 *  2. topic_config_render's output parses back (topic_config_parse) to the
 *     same values: every key in tc_key order, integers in decimal,
 *     key_separator as a double-quoted YAML scalar with escapes or `~`.
 *  3. Only the first nesting levels the format defines are walked, so a
 *     hostile document (aliases, cycles, deep nesting) cannot recurse here.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../logstore/log.h"

#define NODE_CONFIG_MAX_BYTES (1u << 20)

#define PARTITIONS_MAX 10000
#define REPLICATION_MAX NODE_MAX_VOTERS
#define SEGMENT_BYTES_MIN 1024
#define SEGMENT_BYTES_MAX 2147483647
#define MAX_RECORD_BYTES_MAX 67108864

/* ---- one parse ---------------------------------------------------------- */

struct yp {
	yaml_document_t doc;
	int have_doc;
	const char *path;   /* node config file; NULL for .config ("line N: ") */
	size_t nlines;      /* lines in the input (a mark past the end is clamped) */
	char *err;
	size_t errlen;
};

static void put_err(char *err, size_t errlen, const char *prefix, const char *fmt,
                    va_list ap)
{
	int n;

	if (!err || errlen == 0)
		return;
	n = snprintf(err, errlen, "%s", prefix);
	if (n < 0 || (size_t)n >= errlen)
		return;
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
}

__attribute__((format(printf, 3, 4)))
static int yp_fail(struct yp *p, size_t line, const char *fmt, ...)
{
	char prefix[4200];
	va_list ap;

	/* libyaml puts the end of stream on a line of its own when the input
	 * lacks a final newline: report the last real line instead. */
	if (p->nlines && line > p->nlines)
		line = p->nlines;
	if (p->path)
		snprintf(prefix, sizeof(prefix), "%s:%zu: ", p->path, line);
	else
		snprintf(prefix, sizeof(prefix), "line %zu: ", line);
	va_start(ap, fmt);
	put_err(p->err, p->errlen, prefix, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	put_err(err, errlen, "", fmt, ap);
	va_end(ap);
}

static size_t line_of(const yaml_node_t *n)
{
	return n->start_mark.line + 1;
}

static yaml_node_t *node_at(struct yp *p, int id)
{
	return yaml_document_get_node(&p->doc, id);
}

/* `~`, `null`, `Null`, `NULL` or nothing, unquoted (YAML 1.1 null). */
static int is_null(const yaml_node_t *n)
{
	const char *v;

	if (!n || n->type != YAML_SCALAR_NODE ||
	    n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	v = (const char *)n->data.scalar.value;
	return n->data.scalar.length == 0 || strcmp(v, "~") == 0 ||
	       strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

/* The scalar's text if n is a scalar without embedded NUL, else NULL. */
static const char *scalar(const yaml_node_t *n)
{
	if (!n || n->type != YAML_SCALAR_NODE)
		return NULL;
	if (strlen((const char *)n->data.scalar.value) != n->data.scalar.length)
		return NULL;
	return (const char *)n->data.scalar.value;
}

/* How a value is shown in a message: 'text' (escaped, at most 40 bytes),
 * nothing, a list, a mapping. */
static const char *show(const yaml_node_t *n, char *buf, size_t size)
{
	size_t o = 0, len;
	const unsigned char *v;

	if (!n)
		return "nothing";
	if (n->type == YAML_SEQUENCE_NODE)
		return "a list";
	if (n->type == YAML_MAPPING_NODE)
		return "a mapping";
	if (n->type != YAML_SCALAR_NODE)
		return "nothing";
	if (is_null(n))
		return "nothing";
	v = n->data.scalar.value;
	len = n->data.scalar.length;
	buf[o++] = '\'';
	for (size_t i = 0; i < len && o + 8 < size; i++) {
		if (i == 40) {
			o += (size_t)snprintf(buf + o, size - o, "...");
			break;
		}
		if (v[i] == '\t')
			o += (size_t)snprintf(buf + o, size - o, "\\t");
		else if (v[i] == '\n')
			o += (size_t)snprintf(buf + o, size - o, "\\n");
		else if (v[i] < 0x20 || v[i] == 0x7f)
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", v[i]);
		else
			buf[o++] = (char)v[i];
	}
	buf[o++] = '\'';
	buf[o] = '\0';
	return buf;
}

/* Line of byte offset off in text (for reader errors, which carry no mark). */
static size_t line_at_offset(const char *text, size_t len, size_t off)
{
	size_t line = 1;

	for (size_t i = 0; i < off && i < len; i++)
		if (text[i] == '\n')
			line++;
	return line;
}

static int yp_syntax(struct yp *p, yaml_parser_t *ps, const char *text, size_t len)
{
	size_t line;

	if (ps->error == YAML_MEMORY_ERROR) {
		if (p->err && p->errlen)
			set_err(p->err, p->errlen, "out of memory parsing YAML");
		return -ENOMEM;
	}
	if (ps->error == YAML_READER_ERROR)
		line = line_at_offset(text, len, ps->problem_offset);
	else
		line = ps->problem_mark.line + 1;
	if (ps->context)
		return yp_fail(p, line, "YAML syntax error: %s (%s)",
		               ps->problem ? ps->problem : "invalid", ps->context);
	return yp_fail(p, line, "YAML syntax error: %s",
	               ps->problem ? ps->problem : "invalid");
}

/* Loads exactly one document from text (none, or only comments, is an empty
 * document). On success p->doc must be freed with yp_done. */
static int yp_load(struct yp *p, const char *text, size_t len)
{
	yaml_parser_t ps;
	yaml_document_t extra;
	int rc = 0;

	p->have_doc = 0;
	p->nlines = 0;
	for (size_t i = 0; i < len; i++)
		if (text[i] == '\n')
			p->nlines++;
	if (len && text[len - 1] != '\n')
		p->nlines++;
	if (!yaml_parser_initialize(&ps))
		return -ENOMEM;
	yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
	if (!yaml_parser_load(&ps, &p->doc)) {
		rc = yp_syntax(p, &ps, text, len);
		goto out_parser;
	}
	p->have_doc = 1;
	if (!yaml_parser_load(&ps, &extra)) {
		rc = yp_syntax(p, &ps, text, len);
		goto out_doc;
	}
	if (yaml_document_get_root_node(&extra)) {
		rc = yp_fail(p, extra.start_mark.line + 1,
		             "only one YAML document is allowed (found a second '---')");
		yaml_document_delete(&extra);
		goto out_doc;
	}
	yaml_document_delete(&extra);
	goto out_parser;

out_doc:
	yaml_document_delete(&p->doc);
	p->have_doc = 0;
out_parser:
	yaml_parser_delete(&ps);
	return rc;
}

static void yp_done(struct yp *p)
{
	if (p->have_doc)
		yaml_document_delete(&p->doc);
	p->have_doc = 0;
}

/* The root node, or NULL for an empty document (nothing, comments, `~`). */
static yaml_node_t *yp_root(struct yp *p)
{
	yaml_node_t *r = yaml_document_get_root_node(&p->doc);
	return (r && is_null(r)) ? NULL : r;
}

/* Checks that every key of mapping m is a scalar given once. what names the
 * mapping for messages ("node." or ""). */
static int check_keys(struct yp *p, yaml_node_t *m, const char *what)
{
	yaml_node_pair_t *a, *b;
	char sh[64];

	for (a = m->data.mapping.pairs.start; a < m->data.mapping.pairs.top; a++) {
		yaml_node_t *ka = node_at(p, a->key);
		const char *na = scalar(ka);
		if (!na || is_null(ka))
			return yp_fail(p, line_of(ka), "%skeys must be plain names, got %s",
			               what, show(ka, sh, sizeof(sh)));
		for (b = m->data.mapping.pairs.start; b < a; b++) {
			yaml_node_t *kb = node_at(p, b->key);
			if (strcmp(na, scalar(kb)) == 0)
				return yp_fail(p, line_of(ka), "%s%s: given twice (first at line %zu)",
				               what, na, line_of(kb));
		}
	}
	return 0;
}

/* ---- values ------------------------------------------------------------- */

/* A decimal integer: [-](0|[1-9][0-9]*), within [min, max]. */
static int parse_int_text(const char *s, int64_t min, int64_t max, int64_t *out)
{
	const char *d = s;
	uint64_t v = 0, lim;
	int neg = 0;

	if (*d == '-') {
		neg = 1;
		d++;
	}
	if (*d < '0' || *d > '9' || (d[0] == '0' && d[1] != '\0'))
		return -1;
	lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (; *d; d++) {
		if (*d < '0' || *d > '9')
			return -1;
		if (v > (lim - (uint64_t)(*d - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*d - '0');
	}
	int64_t r;
	if (neg)
		r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	else
		r = (int64_t)v;
	if (r < min || r > max)
		return -1;
	*out = r;
	return 0;
}

static int parse_int(const yaml_node_t *n, int64_t min, int64_t max, int64_t *out)
{
	const char *s = scalar(n);

	if (!s || is_null(n))
		return -1;
	return parse_int_text(s, min, max, out);
}

/* Index of the scalar's text in names[] (NULL-terminated), or -1. */
static int parse_enum(const yaml_node_t *n, const char *const *names)
{
	const char *s = scalar(n);

	if (!s)
		return -1;
	for (int i = 0; names[i]; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

static const char *const acks_names[] = { "leader", "all", NULL };
static const char *const cleanup_names[] = { "delete", "compact", NULL };
static const char *const compression_names[] = { "zstd", "none", NULL };

/* Parses the value of topic key k (not null) into tc. prefix is "" or
 * "defaults." for messages. */
static int parse_topic_value(struct yp *p, const char *prefix, enum tc_key k,
                             yaml_node_t *v, struct topic_config *tc)
{
	const char *name = topic_config_key_name(k);
	char sh[80];
	int64_t i;
	int e;

#define BAD(...) yp_fail(p, line_of(v), __VA_ARGS__)
	switch (k) {
	case TC_PARTITIONS:
		if (parse_int(v, 1, PARTITIONS_MAX, &i))
			return BAD("%s%s: must be an integer 1..%d, got %s", prefix, name,
			           PARTITIONS_MAX, show(v, sh, sizeof(sh)));
		tc->partitions = (uint32_t)i;
		break;
	case TC_REPLICATION:
	case TC_MIN_INSYNC:
		if (parse_int(v, 1, REPLICATION_MAX, &i))
			return BAD("%s%s: must be an integer 1..%d, got %s", prefix, name,
			           REPLICATION_MAX, show(v, sh, sizeof(sh)));
		if (k == TC_REPLICATION)
			tc->replication = (uint32_t)i;
		else
			tc->min_insync = (uint32_t)i;
		break;
	case TC_ACKS:
		if ((e = parse_enum(v, acks_names)) < 0)
			return BAD("%s%s: must be leader or all, got %s", prefix, name,
			           show(v, sh, sizeof(sh)));
		tc->acks = e == 0 ? REP_ACKS_LEADER : REP_ACKS_ALL;
		break;
	case TC_RETENTION_MS:
		if (parse_int(v, -1, INT64_MAX, &i))
			return BAD("%s%s: must be -1 (forever) or an integer >= 0 "
			           "(milliseconds), got %s", prefix, name, show(v, sh, sizeof(sh)));
		tc->retention_ms = i;
		break;
	case TC_RETENTION_BYTES:
		if (parse_int(v, -1, INT64_MAX, &i))
			return BAD("%s%s: must be -1 (unlimited) or an integer >= 0 "
			           "(bytes, no units), got %s", prefix, name, show(v, sh, sizeof(sh)));
		tc->retention_bytes = i;
		break;
	case TC_SEGMENT_BYTES:
		if (parse_int(v, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX, &i))
			return BAD("%s%s: must be an integer %d..%d (bytes, no units), got %s",
			           prefix, name, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX,
			           show(v, sh, sizeof(sh)));
		tc->segment_bytes = (uint64_t)i;
		break;
	case TC_CLEANUP:
		if ((e = parse_enum(v, cleanup_names)) < 0)
			return BAD("%s%s: must be delete or compact, got %s", prefix, name,
			           show(v, sh, sizeof(sh)));
		tc->cleanup = e == 0 ? LS_CLEANUP_DELETE : LS_CLEANUP_COMPACT;
		break;
	case TC_COMPRESSION:
		if ((e = parse_enum(v, compression_names)) < 0)
			return BAD("%s%s: must be zstd or none, got %s", prefix, name,
			           show(v, sh, sizeof(sh)));
		tc->compression = e == 0 ? LS_CODEC_ZSTD : LS_CODEC_NONE;
		break;
	case TC_COMPRESSION_LEVEL:
		if (parse_int(v, -5, 19, &i) || i == 0)
			return BAD("%s%s: must be an integer 1..19 (or -5..-1 for zstd's fast "
			           "levels), got %s", prefix, name, show(v, sh, sizeof(sh)));
		tc->compression_level = (int)i;
		break;
	case TC_KEY_SEPARATOR: {
		size_t len = v->type == YAML_SCALAR_NODE ? v->data.scalar.length : 0;
		unsigned char c = len ? v->data.scalar.value[0] : 0;
		if (v->type != YAML_SCALAR_NODE || len != 1) {
			if (v->type == YAML_SCALAR_NODE &&
			    v->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE &&
			    len == 2 && v->data.scalar.value[0] == '\\')
				return BAD("%s%s: must be exactly one byte, got %s (2 bytes; "
				           "escapes work in double quotes: \"\\t\")", prefix, name,
				           show(v, sh, sizeof(sh)));
			return BAD("%s%s: must be exactly one byte (e.g. \"\\t\" or \",\"), or ~ "
			           "for none, got %s", prefix, name, show(v, sh, sizeof(sh)));
		}
		if (c == '\n' || c == '\0')
			return BAD("%s%s: a newline or NUL cannot separate a key: records are "
			           "lines; got %s", prefix, name, show(v, sh, sizeof(sh)));
		tc->key_separator = (char)c;
		break;
	}
	case TC_MAX_RECORD_BYTES:
		if (parse_int(v, 1, MAX_RECORD_BYTES_MAX, &i))
			return BAD("%s%s: must be an integer 1..%d (bytes, no units), got %s",
			           prefix, name, MAX_RECORD_BYTES_MAX, show(v, sh, sizeof(sh)));
		tc->max_record_bytes = (uint32_t)i;
		break;
	case TC_NKEYS:
		break;
	}
#undef BAD
	return 0;
}

static const char *topic_key_list(void)
{
	return "partitions, replication, min_insync, acks, retention_ms, "
	       "retention_bytes, segment_bytes, cleanup, compression, "
	       "compression_level, key_separator, max_record_bytes";
}

/* Parses a mapping of topic keys. Sets values and set_mask in *tc, null keys
 * in *cleared (if cleared is NULL, a null sets the built-in value), and the
 * line of each key in lines[] (may be NULL). */
static int parse_topic_mapping(struct yp *p, yaml_node_t *m, const char *prefix,
                               struct topic_config *tc, uint32_t *cleared,
                               size_t *lines)
{
	yaml_node_pair_t *pair;
	int rc;

	if ((rc = check_keys(p, m, prefix)) != 0)
		return rc;
	for (pair = m->data.mapping.pairs.start; pair < m->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = node_at(p, pair->key), *v = node_at(p, pair->value);
		int key = topic_config_key_from_name(scalar(k));

		if (key < 0)
			return yp_fail(p, line_of(k), "%s%s: unknown key (allowed: %s)", prefix,
			               scalar(k), topic_key_list());
		if (lines)
			lines[key] = line_of(k);
		if (is_null(v)) {
			if (cleared) {
				*cleared |= 1u << key;
			} else {
				struct topic_config b;
				topic_config_builtin(&b);
				topic_config_copy_key(tc, &b, (enum tc_key)key);
				tc->set_mask |= 1u << key;
			}
			continue;
		}
		if ((rc = parse_topic_value(p, prefix, (enum tc_key)key, v, tc)) != 0)
			return rc;
		tc->set_mask |= 1u << key;
	}
	return 0;
}

/* ---- .config ------------------------------------------------------------ */

int topic_config_parse(const char *yaml, size_t len, struct topic_config *changes,
                       uint32_t *cleared, char *err, size_t errlen)
{
	struct yp p = { .path = NULL, .err = err, .errlen = errlen };
	struct topic_config tc;
	uint32_t clr = 0;
	yaml_node_t *root;
	int rc;

	topic_config_builtin(&tc);
	if ((rc = yp_load(&p, yaml ? yaml : "", yaml ? len : 0)) != 0)
		return rc;
	root = yp_root(&p);
	if (root && root->type != YAML_MAPPING_NODE) {
		rc = yp_fail(&p, line_of(root), "must be a YAML mapping of 'key: value' "
		             "lines, like 'partitions: 6'");
		goto out;
	}
	if (root && (rc = parse_topic_mapping(&p, root, "", &tc, &clr, NULL)) != 0)
		goto out;
	*changes = tc;
	*cleared = clr;
out:
	yp_done(&p);
	return rc;
}

struct out {
	char *buf;
	size_t size, len;
};

__attribute__((format(printf, 2, 3)))
static void out_printf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(o->len < o->size ? o->buf + o->len : NULL,
	              o->len < o->size ? o->size - o->len : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n;
}

/* key_separator as a double-quoted YAML scalar, or ~ for none. */
static void render_separator(struct out *o, char sep)
{
	unsigned char c = (unsigned char)sep;

	if (c == 0)
		out_printf(o, "~");
	else if (c == '\t')
		out_printf(o, "\"\\t\"");
	else if (c == '"' || c == '\\')
		out_printf(o, "\"\\%c\"", c);
	else if (c >= 0x20 && c < 0x7f)
		out_printf(o, "\"%c\"", c);
	else
		out_printf(o, "\"\\x%02x\"", c);
}

size_t topic_config_render(const struct topic_config *eff, const char *error,
                           char *buf, size_t size)
{
	struct out o = { .buf = buf, .size = size, .len = 0 };

	if (buf && size)
		buf[0] = '\0';
	else
		o.buf = NULL, o.size = 0;
	if (error && *error) {
		out_printf(&o, "# error: ");
		for (const char *e = error; *e; e++)
			out_printf(&o, "%c", *e == '\n' || *e == '\r' ? ' ' : *e);
		out_printf(&o, "\n");
	}
	for (int k = 0; k < TC_NKEYS; k++) {
		out_printf(&o, "%s: ", topic_config_key_name((enum tc_key)k));
		switch ((enum tc_key)k) {
		case TC_PARTITIONS: out_printf(&o, "%" PRIu32, eff->partitions); break;
		case TC_REPLICATION: out_printf(&o, "%" PRIu32, eff->replication); break;
		case TC_MIN_INSYNC: out_printf(&o, "%" PRIu32, eff->min_insync); break;
		case TC_ACKS:
			out_printf(&o, "%s", eff->acks == REP_ACKS_LEADER ? "leader" : "all");
			break;
		case TC_RETENTION_MS: out_printf(&o, "%" PRId64, eff->retention_ms); break;
		case TC_RETENTION_BYTES: out_printf(&o, "%" PRId64, eff->retention_bytes); break;
		case TC_SEGMENT_BYTES: out_printf(&o, "%" PRIu64, eff->segment_bytes); break;
		case TC_CLEANUP:
			out_printf(&o, "%s", eff->cleanup == LS_CLEANUP_COMPACT ? "compact" : "delete");
			break;
		case TC_COMPRESSION:
			out_printf(&o, "%s", eff->compression == LS_CODEC_ZSTD ? "zstd" : "none");
			break;
		case TC_COMPRESSION_LEVEL: out_printf(&o, "%d", eff->compression_level); break;
		case TC_KEY_SEPARATOR: render_separator(&o, eff->key_separator); break;
		case TC_MAX_RECORD_BYTES: out_printf(&o, "%" PRIu32, eff->max_record_bytes); break;
		case TC_NKEYS: break;
		}
		out_printf(&o, "\n");
	}
	return o.len;
}

/* ---- node configuration ------------------------------------------------- */

void node_config_default(struct node_config *out)
{
	memset(out, 0, sizeof(*out));
	out->id = 1;
	out->data_dir[0] = '\0';
	snprintf(out->listen_host, sizeof(out->listen_host), "127.0.0.1");
	out->listen_port = 7070;
	out->log_file[0] = '\0';
	out->log_level = TFS_LOG_INFO;
	out->nvoters = 0;
	topic_config_builtin(&out->defaults);
	out->group_start = GROUP_START_EARLIEST;
	out->flush_ms = 1000;
	out->retention_check_ms = 5000;
	out->replica_lag_ms = 10000;
	out->replica_wait_ms = 15000;
	out->node_timeout_ms = 3000;
	out->snapshot_entries = 4096;
	out->leader_rebalance_ms = 30000;
}

/* "A.B.C.D" with each part 0..255 in decimal, no leading zeros; the text is
 * copied to host. */
static int parse_ipv4(const char *s, size_t n, char *host, size_t hostlen)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0, digits = 0;
		if (part > 0) {
			if (i >= n || s[i] != '.')
				return -1;
			i++;
		}
		while (i < n && s[i] >= '0' && s[i] <= '9') {
			if (digits == 1 && v == 0)
				return -1;   /* leading zero */
			v = v * 10 + (unsigned)(s[i] - '0');
			if (v > 255)
				return -1;
			digits++;
			i++;
		}
		if (digits == 0)
			return -1;
	}
	if (i != n || n >= hostlen)
		return -1;
	memcpy(host, s, n);
	host[n] = '\0';
	return 0;
}

/* "A.B.C.D:PORT", port 1..65535. */
static int parse_addr(const char *s, char *host, size_t hostlen, uint16_t *port)
{
	const char *colon = strrchr(s, ':'), *d;
	unsigned long v = 0;

	if (!colon || parse_ipv4(s, (size_t)(colon - s), host, hostlen) != 0)
		return -1;
	d = colon + 1;
	if (*d < '1' || *d > '9')
		return -1;
	for (; *d; d++) {
		if (*d < '0' || *d > '9')
			return -1;
		v = v * 10 + (unsigned long)(*d - '0');
		if (v > 65535)
			return -1;
	}
	*port = (uint16_t)v;
	return 0;
}

static int parse_path(struct yp *p, const char *key, yaml_node_t *v, char *dst,
                      size_t dstlen)
{
	const char *s = scalar(v);
	char sh[80];

	if (!s || is_null(v) || *s == '\0')
		return yp_fail(p, line_of(v), "%s: must be a path, got %s", key,
		               show(v, sh, sizeof(sh)));
	if (strlen(s) >= dstlen)
		return yp_fail(p, line_of(v), "%s: path longer than %zu bytes", key, dstlen - 1);
	memcpy(dst, s, strlen(s) + 1);
	return 0;
}

/* Rejects a section that is not a mapping; NULL-valued sections are empty. */
static int section(struct yp *p, const char *name, yaml_node_t *v, const char *keys)
{
	char sh[80];

	if (v->type == YAML_MAPPING_NODE)
		return check_keys(p, v, name);
	return yp_fail(p, line_of(v), "%.*s: must be a mapping with keys %s, got %s",
	               (int)strlen(name) - 1, name, keys, show(v, sh, sizeof(sh)));
}

#define FOR_PAIRS(p, m, k, v, pair)                                                  \
	for (yaml_node_pair_t *pair = (m)->data.mapping.pairs.start;                   \
	     pair < (m)->data.mapping.pairs.top &&                                       \
	     ((k) = node_at(p, pair->key), (v) = node_at(p, pair->value), 1);            \
	     pair++)

struct node_lines {
	size_t id, voters, defaults, defaults_key[TC_NKEYS];
	int listen_set;
};

static int parse_node_section(struct yp *p, yaml_node_t *m, struct node_config *c,
                              struct node_lines *ln)
{
	static const char *const levels[] = { "debug", "info", "warn", "error", NULL };
	const char *keys = "id, data_dir, listen, log_file, log_level";
	yaml_node_t *k, *v;
	char sh[80];
	int rc;

	if ((rc = section(p, "node.", m, keys)) != 0)
		return rc;
	FOR_PAIRS(p, m, k, v, pair) {
		const char *name = scalar(k);
		int64_t i;
		int e;

		if (strcmp(name, "id") == 0) {
			if (parse_int(v, 1, 65535, &i))
				return yp_fail(p, line_of(v), "node.id: must be an integer 1..65535, "
				               "got %s", show(v, sh, sizeof(sh)));
			c->id = (uint16_t)i;
			ln->id = line_of(v);
		} else if (strcmp(name, "data_dir") == 0) {
			if ((rc = parse_path(p, "node.data_dir", v, c->data_dir,
			                     sizeof(c->data_dir))) != 0)
				return rc;
		} else if (strcmp(name, "log_file") == 0) {
			if ((rc = parse_path(p, "node.log_file", v, c->log_file,
			                     sizeof(c->log_file))) != 0)
				return rc;
		} else if (strcmp(name, "listen") == 0) {
			const char *s = scalar(v);
			if (!s || is_null(v) ||
			    parse_addr(s, c->listen_host, sizeof(c->listen_host), &c->listen_port))
				return yp_fail(p, line_of(v), "node.listen: must be A.B.C.D:PORT (a "
				               "dotted-quad IPv4 address, port 1..65535), got %s",
				               show(v, sh, sizeof(sh)));
			ln->listen_set = 1;
		} else if (strcmp(name, "log_level") == 0) {
			if ((e = parse_enum(v, levels)) < 0)
				return yp_fail(p, line_of(v), "node.log_level: must be debug, info, "
				               "warn or error, got %s", show(v, sh, sizeof(sh)));
			c->log_level = e == 0 ? TFS_LOG_DEBUG : e == 1 ? TFS_LOG_INFO :
			               e == 2 ? TFS_LOG_WARN : TFS_LOG_ERROR;
		} else {
			return yp_fail(p, line_of(k), "node.%s: unknown key (allowed: %s)", name,
			               keys);
		}
	}
	return 0;
}

static int parse_voters(struct yp *p, yaml_node_t *v, struct node_config *c)
{
	char sh[80];
	size_t lines[NODE_MAX_VOTERS];

	if (is_null(v))
		return 0;
	if (v->type != YAML_SEQUENCE_NODE)
		return yp_fail(p, line_of(v), "cluster.voters: must be a list of "
		               "ID@A.B.C.D:PORT entries, got %s", show(v, sh, sizeof(sh)));
	c->nvoters = 0;
	for (yaml_node_item_t *it = v->data.sequence.items.start;
	     it < v->data.sequence.items.top; it++) {
		yaml_node_t *e = node_at(p, *it);
		const char *s = scalar(e), *at;
		struct node_voter nv;
		int64_t id;

		if (c->nvoters == NODE_MAX_VOTERS)
			return yp_fail(p, line_of(e), "cluster.voters: at most %d voters",
			               NODE_MAX_VOTERS);
		at = s ? strchr(s, '@') : NULL;
		memset(&nv, 0, sizeof(nv));
		if (at) {
			char idtext[8];
			size_t n = (size_t)(at - s);
			if (n == 0 || n >= sizeof(idtext))
				goto bad;
			memcpy(idtext, s, n);
			idtext[n] = '\0';
			if (parse_int_text(idtext, 1, 65535, &id))
				goto bad;
			if (parse_addr(at + 1, nv.host, sizeof(nv.host), &nv.port))
				goto bad;
			nv.id = (uint16_t)id;
		} else {
			goto bad;
		}
		for (unsigned j = 0; j < c->nvoters; j++) {
			if (c->voters[j].id == nv.id)
				return yp_fail(p, line_of(e), "cluster.voters: id %u is listed twice "
				               "(first at line %zu)", nv.id, lines[j]);
			if (c->voters[j].port == nv.port && strcmp(c->voters[j].host, nv.host) == 0)
				return yp_fail(p, line_of(e), "cluster.voters: %s:%u is listed twice "
				               "(first at line %zu)", nv.host, nv.port, lines[j]);
		}
		lines[c->nvoters] = line_of(e);
		c->voters[c->nvoters++] = nv;
		continue;
bad:
		return yp_fail(p, line_of(e), "cluster.voters: each entry must be "
		               "ID@A.B.C.D:PORT (ID 1..65535, a dotted-quad IPv4 address, "
		               "port 1..65535), got %s", show(e, sh, sizeof(sh)));
	}
	return 0;
}

static int parse_cluster_section(struct yp *p, yaml_node_t *m, struct node_config *c,
                                 struct node_lines *ln)
{
	static const struct {
		const char *name;
		size_t off;
	} ms_keys[] = {
		{ "replica_lag_ms", offsetof(struct node_config, replica_lag_ms) },
		{ "replica_wait_ms", offsetof(struct node_config, replica_wait_ms) },
		{ "node_timeout_ms", offsetof(struct node_config, node_timeout_ms) },
	};
	const char *keys = "voters, replica_lag_ms, replica_wait_ms, node_timeout_ms, "
	                   "snapshot_entries, leader_rebalance_ms";
	yaml_node_t *k, *v;
	char sh[80];
	int rc;

	if ((rc = section(p, "cluster.", m, keys)) != 0)
		return rc;
	FOR_PAIRS(p, m, k, v, pair) {
		const char *name = scalar(k);
		size_t j;
		for (j = 0; j < sizeof(ms_keys) / sizeof(ms_keys[0]); j++)
			if (strcmp(name, ms_keys[j].name) == 0)
				break;
		if (j < sizeof(ms_keys) / sizeof(ms_keys[0])) {
			int64_t i;
			if (parse_int(v, 100, 3600000, &i))
				return yp_fail(p, line_of(v), "cluster.%s: must be an integer "
				               "100..3600000 (milliseconds), got %s", name,
				               show(v, sh, sizeof(sh)));
			*(uint32_t *)((char *)c + ms_keys[j].off) = (uint32_t)i;
			continue;
		}
		if (strcmp(name, "snapshot_entries") == 0) {
			int64_t i;
			if (parse_int(v, 16, 100000000, &i))
				return yp_fail(p, line_of(v), "cluster.snapshot_entries: must be an "
				               "integer 16..100000000, got %s", show(v, sh, sizeof(sh)));
			c->snapshot_entries = (uint32_t)i;
			continue;
		}
		if (strcmp(name, "leader_rebalance_ms") == 0) {
			int64_t i;
			if (parse_int(v, 0, 86400000, &i) || (i > 0 && i < 100))
				return yp_fail(p, line_of(v), "cluster.leader_rebalance_ms: must be 0 "
				               "(never) or an integer 100..86400000 (milliseconds), got %s",
				               show(v, sh, sizeof(sh)));
			c->leader_rebalance_ms = (uint32_t)i;
			continue;
		}
		if (strcmp(name, "voters") != 0)
			return yp_fail(p, line_of(k), "cluster.%s: unknown key (allowed: %s)",
			               name, keys);
		if ((rc = parse_voters(p, v, c)) != 0)
			return rc;
		ln->voters = line_of(k);
	}
	return 0;
}

static int parse_groups_section(struct yp *p, yaml_node_t *m, struct node_config *c)
{
	static const char *const starts[] = { "earliest", "latest", NULL };
	yaml_node_t *k, *v;
	char sh[80];
	int rc, e;

	if ((rc = section(p, "groups.", m, "start")) != 0)
		return rc;
	FOR_PAIRS(p, m, k, v, pair) {
		const char *name = scalar(k);
		if (strcmp(name, "start") != 0)
			return yp_fail(p, line_of(k), "groups.%s: unknown key (allowed: start)",
			               name);
		if ((e = parse_enum(v, starts)) < 0)
			return yp_fail(p, line_of(v), "groups.start: must be earliest or latest, "
			               "got %s", show(v, sh, sizeof(sh)));
		c->group_start = e == 0 ? GROUP_START_EARLIEST : GROUP_START_LATEST;
	}
	return 0;
}

static int parse_storage_section(struct yp *p, yaml_node_t *m, struct node_config *c)
{
	const char *keys = "flush_ms, retention_check_ms";
	yaml_node_t *k, *v;
	char sh[80];
	int64_t i;
	int rc;

	if ((rc = section(p, "storage.", m, keys)) != 0)
		return rc;
	FOR_PAIRS(p, m, k, v, pair) {
		const char *name = scalar(k);
		if (strcmp(name, "flush_ms") == 0) {
			if (parse_int(v, 0, UINT32_MAX, &i))
				return yp_fail(p, line_of(v), "storage.flush_ms: must be an integer "
				               "0..4294967295 (milliseconds; 0 = never), got %s",
				               show(v, sh, sizeof(sh)));
			c->flush_ms = (uint32_t)i;
		} else if (strcmp(name, "retention_check_ms") == 0) {
			if (parse_int(v, 1, UINT32_MAX, &i))
				return yp_fail(p, line_of(v), "storage.retention_check_ms: must be an "
				               "integer 1..4294967295 (milliseconds), got %s",
				               show(v, sh, sizeof(sh)));
			c->retention_check_ms = (uint32_t)i;
		} else {
			return yp_fail(p, line_of(k), "storage.%s: unknown key (allowed: %s)", name,
			               keys);
		}
	}
	return 0;
}

/* Reads the whole file (at most NODE_CONFIG_MAX_BYTES) into a malloc'd buffer. */
static int read_file(const char *path, char **out, size_t *outlen, char *err,
                     size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = 0;

	if (!f) {
		rc = -errno;
		set_err(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
		return rc;
	}
	for (;;) {
		if (len == cap) {
			char *nb;
			if (cap >= NODE_CONFIG_MAX_BYTES) {
				set_err(err, errlen, "%s: larger than %u bytes", path,
				        NODE_CONFIG_MAX_BYTES);
				rc = -EFBIG;
				goto err_after_alloc;
			}
			cap = cap ? cap * 2 : 4096;
			nb = realloc(buf, cap);
			if (!nb) {
				rc = -ENOMEM;
				set_err(err, errlen, "%s: out of memory", path);
				goto err_after_alloc;
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0) {
			if (ferror(f)) {
				rc = -EIO;
				set_err(err, errlen, "%s: read error", path);
				goto err_after_alloc;
			}
			break;
		}
	}
	fclose(f);
	*out = buf;
	*outlen = len;
	return 0;

err_after_alloc:
	free(buf);
	fclose(f);
	return rc;
}

int node_config_load(const char *path, struct node_config *out, char *err,
                     size_t errlen)
{
	struct yp p = { .path = path, .err = err, .errlen = errlen };
	struct node_lines ln;
	struct node_config *c;
	yaml_node_t *root, *k, *v;
	char *text = NULL;
	size_t len = 0;
	int rc;

	if (err && errlen)
		err[0] = '\0';
	c = malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	node_config_default(c);
	memset(&ln, 0, sizeof(ln));
	if ((rc = read_file(path, &text, &len, err, errlen)) != 0)
		goto out_cfg;
	if ((rc = yp_load(&p, text, len)) != 0)
		goto out_text;

	root = yp_root(&p);
	if (!root)
		goto done;
	if (root->type != YAML_MAPPING_NODE) {
		rc = yp_fail(&p, line_of(root), "the file must be a YAML mapping with "
		             "sections node:, cluster:, defaults:, groups:, storage:");
		goto out_doc;
	}
	if ((rc = check_keys(&p, root, "")) != 0)
		goto out_doc;
	FOR_PAIRS(&p, root, k, v, pair) {
		const char *name = scalar(k);
		if (is_null(v))
			continue;   /* "cluster:" with every key commented out */
		if (strcmp(name, "node") == 0) {
			rc = parse_node_section(&p, v, c, &ln);
		} else if (strcmp(name, "cluster") == 0) {
			rc = parse_cluster_section(&p, v, c, &ln);
		} else if (strcmp(name, "defaults") == 0) {
			ln.defaults = line_of(k);
			if (v->type != YAML_MAPPING_NODE) {
				char sh[80];
				rc = yp_fail(&p, line_of(v), "defaults: must be a mapping of topic "
				             "keys (%s), got %s", topic_key_list(),
				             show(v, sh, sizeof(sh)));
			} else {
				rc = parse_topic_mapping(&p, v, "defaults.", &c->defaults, NULL,
				                         ln.defaults_key);
			}
		} else if (strcmp(name, "groups") == 0) {
			rc = parse_groups_section(&p, v, c);
		} else if (strcmp(name, "storage") == 0) {
			rc = parse_storage_section(&p, v, c);
		} else {
			rc = yp_fail(&p, line_of(k), "%s: unknown key (allowed: node, cluster, "
			             "defaults, groups, storage)", name);
		}
		if (rc != 0)
			goto out_doc;
	}

	/* Cross-section rules. */
	if (c->nvoters > 0) {
		struct node_voter *self = NULL;
		for (unsigned i = 0; i < c->nvoters; i++)
			if (c->voters[i].id == c->id)
				self = &c->voters[i];
		if (!self) {
			rc = yp_fail(&p, ln.id ? ln.id : ln.voters, "node.id: %u%s is not among "
			             "cluster.voters; every voter's node.id must be listed",
			             c->id, ln.id ? "" : " (the default)");
			goto out_doc;
		}
		if (!ln.listen_set) {
			snprintf(c->listen_host, sizeof(c->listen_host), "%s", self->host);
			c->listen_port = self->port;
		}
	}
	{
		/* The defaults must make a valid topic in this cluster; a refusal
		 * names its key first ("replication: ..."), which gives the line. */
		char msg[256], key[32];
		unsigned nodes = c->nvoters ? c->nvoters : 1;
		if (topic_config_check(NULL, &c->defaults, nodes, msg, sizeof(msg)) != 0) {
			int k;
			size_t line = ln.defaults;
			snprintf(key, sizeof(key), "%.*s", (int)strcspn(msg, ":"), msg);
			if ((k = topic_config_key_from_name(key)) >= 0 && ln.defaults_key[k])
				line = ln.defaults_key[k];
			rc = yp_fail(&p, line ? line : 1, "defaults.%s", msg);
			goto out_doc;
		}
	}
done:
	*out = *c;
	rc = 0;
out_doc:
	yp_done(&p);
out_text:
	free(text);
out_cfg:
	free(c);
	return rc;
}
