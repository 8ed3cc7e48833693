// SPDX-License-Identifier: Apache-2.0
// dapb_filter: an Envoy HTTP filter (proxy-wasm ABI v0.2.1, freestanding C) that gives every request a DAPB
// class and tags it with the `x-dapb-class` header, so that the route table sends it to the class's cluster,
// whose upstream sockets carry the class's DSCP (IP_TOS) for the kernel to classify. Wasm cannot set socket
// options itself.
//
// Class of a request: its urgency u in [0, 1] is taken from the RFC 9218 `priority` header when the client
// declares one (u=0 most urgent .. u=7 least: u_i = (7 - u) / 7), otherwise from the route's urgency in the
// plugin configuration, otherwise the default. u > u_threshold -> latency; u < throughput_below -> throughput;
// else auto (the header is removed so the default route applies).
//
// Timed aggregation (where the kernel cannot coalesce: low rates, short bounds): request and response body
// chunks of throughput-class streams are held (Envoy buffers them, with flow control) and released as one write
// when
// hold_bytes are buffered (or half the proxy's buffer limit, so that the next chunk cannot overflow it), when
// the oldest held byte would otherwise wait past hold_ms, at end of stream, on trailers, and at once on an
// urgent message (a chunk that starts with urgent_prefix; after the 5-byte message header for gRPC).
// hold_bytes = 0 turns it off. The host's tick comes late (Envoy: every 3-4.5 ms when 1 ms is asked for), so
// a hold is released at the last tick that surely comes before the bound: the filter keeps the longest recent
// tick interval and releases when age + that interval reaches hold_ms. Envoy owns the buffered bytes: a reset or
// a drain is Envoy's ordinary stream handling; the filter never drops, reorders or rewrites body bytes.
//
// Plugin configuration (JSON, one flat object; the contract with dapb_mesh/mesh/filter_config.py, see "configuration"
// below). A new configuration releases what is held and applies to every stream of the VM, open ones included:
//   {"version": 1, "u_threshold": 0.5, "throughput_below": 0.3, "default_urgency": 0.4, "hold_bytes": 0,
//    "hold_ms": 0, "buffer_limit_bytes": 0, "urgent_prefix": "!", "route:<route name>": <urgency 0..1>, ...}
#include <stddef.h>
#include <stdint.h>

#define WASM_EXPORT(name) __attribute__((export_name(#name)))
#define WASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

enum { OK = 0, NOT_FOUND = 1 };
enum { MAP_REQUEST_HEADERS = 0, MAP_RESPONSE_HEADERS = 2 };
enum { BUFFER_REQUEST_BODY = 0, BUFFER_RESPONSE_BODY = 1, BUFFER_PLUGIN_CONFIGURATION = 7 };
// Body callbacks: CONTINUE, or stop and let Envoy buffer with flow control (StopIterationAndWatermark): Envoy
// stops reading from the peer when its buffer limit is reached instead of answering 413, and each call then
// shows the filter only the newest chunk.
enum { ACTION_CONTINUE = 0, ACTION_HOLD_WITH_FLOW_CONTROL = 2 };
enum { STREAM_REQUEST = 0, STREAM_RESPONSE = 1 };
enum { LOG_INFO = 2, LOG_WARN = 3 };

WASM_IMPORT(proxy_log) int32_t proxy_log(int32_t level, const char *msg, size_t size);
WASM_IMPORT(proxy_get_buffer_bytes)
int32_t proxy_get_buffer_bytes(int32_t buffer, size_t start, size_t max, char **out, size_t *out_size);
WASM_IMPORT(proxy_get_header_map_value)
int32_t proxy_get_header_map_value(int32_t map, const char *key, size_t key_size, char **out, size_t *out_size);
WASM_IMPORT(proxy_replace_header_map_value)
int32_t proxy_replace_header_map_value(int32_t map, const char *key, size_t key_size, const char *value,
				       size_t value_size);
WASM_IMPORT(proxy_remove_header_map_value)
int32_t proxy_remove_header_map_value(int32_t map, const char *key, size_t key_size);
WASM_IMPORT(proxy_get_property)
int32_t proxy_get_property(const char *path, size_t path_size, char **out, size_t *out_size);
WASM_IMPORT(proxy_set_tick_period_milliseconds) int32_t proxy_set_tick_period_milliseconds(uint32_t ms);
WASM_IMPORT(proxy_get_current_time_nanoseconds) int32_t proxy_get_current_time_nanoseconds(uint64_t *ns);
WASM_IMPORT(proxy_set_effective_context) int32_t proxy_set_effective_context(uint32_t ctx);
WASM_IMPORT(proxy_continue_stream) int32_t proxy_continue_stream(int32_t stream);

// The compiler calls these for struct copies and initialisers; there is no libc to give them.
void *memcpy(void *dst, const void *src, size_t n)
{
	char *d = dst;
	const char *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	char *d = dst;
	while (n--)
		*d++ = (char)c;
	return dst;
}

// ---- memory: size-class free lists for blocks up to 4 KiB, and whole-page runs for larger ones, all over pages
// taken with memory.grow (host buffers come through here). Every block goes back where it came from when freed.
#define CLASSES 8
#define PAGE 65536
static void *free_lists[CLASSES];

static size_t class_size(int c) { return (size_t)32 << c; } // 32 B .. 4 KiB

static void *grow(size_t pages)
{
	long old = __builtin_wasm_memory_grow(0, pages);
	return old < 0 ? NULL : (void *)(old * PAGE);
}

// A free run of whole pages; runs are kept in address order and merged with their neighbours when freed.
struct run {
	size_t pages;
	struct run *next;
};
static struct run *free_runs;

// `pages` whole pages: the first free run that is large enough (split, the rest stays free); a free run at the
// end of memory that is too short is grown in place; otherwise new pages.
static void *take_pages(size_t pages)
{
	struct run **at = &free_runs, *last = NULL, **last_at = NULL;
	for (; *at; at = &(*at)->next) {
		struct run *r = *at;
		if (r->pages >= pages) {
			if (r->pages == pages) {
				*at = r->next;
			} else {
				struct run *rest = (struct run *)((char *)r + pages * PAGE);
				rest->pages = r->pages - pages;
				rest->next = r->next;
				*at = rest;
			}
			return r;
		}
		last = r;
		last_at = at;
	}
	size_t end = __builtin_wasm_memory_size(0) * PAGE;
	if (last && (size_t)last + last->pages * PAGE == end) { // the last run ends memory: grow it by the shortfall
		if (!grow(pages - last->pages))
			return NULL;
		*last_at = last->next;
		return last;
	}
	return grow(pages);
}

static void give_pages(void *p, size_t pages)
{
	struct run *r = p, **at = &free_runs, *prev = NULL;
	while (*at && *at < r) {
		prev = *at;
		at = &(*at)->next;
	}
	r->pages = pages;
	r->next = *at;
	*at = r;
	if (r->next && (char *)r + r->pages * PAGE == (char *)r->next) { // merge with the run after
		r->pages += r->next->pages;
		r->next = r->next->next;
	}
	if (prev && (char *)prev + prev->pages * PAGE == (char *)r) { // and with the run before
		prev->pages += r->pages;
		prev->next = r->next;
	}
}

// Header before every block: its class (< CLASSES), or CLASSES + the number of pages of a large block.
static void *dapb_alloc(size_t n)
{
	if (n > (size_t)1 << 30)
		return NULL; // more than a 32-bit memory could ever give
	n += 8;
	for (int c = 0; c < CLASSES; c++) {
		if (n <= class_size(c)) {
			uint64_t *block = free_lists[c];
			if (block) {
				free_lists[c] = *(void **)(block + 1);
			} else {
				block = take_pages(1);
				if (!block)
					return NULL;
				// carve the page: keep one block, chain the rest
				size_t size = class_size(c);
				for (size_t off = size; off + size <= PAGE; off += size) {
					uint64_t *b = (uint64_t *)((char *)block + off);
					b[0] = c;
					*(void **)(b + 1) = free_lists[c];
					free_lists[c] = b;
				}
			}
			block[0] = c;
			return block + 1;
		}
	}
	size_t pages = (n + PAGE - 1) / PAGE;
	uint64_t *big = take_pages(pages);
	if (!big)
		return NULL;
	big[0] = CLASSES + pages;
	return big + 1;
}

static void dapb_free(void *p)
{
	if (!p)
		return;
	uint64_t *block = (uint64_t *)p - 1;
	if (block[0] < CLASSES) {
		*(void **)(block + 1) = free_lists[block[0]];
		free_lists[block[0]] = block;
	} else {
		give_pages(block, block[0] - CLASSES);
	}
}

WASM_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return dapb_alloc(size); }

// ---- tiny string helpers ----
static int str_eq(const char *a, size_t an, const char *b, size_t bn)
{
	if (an != bn)
		return 0;
	for (size_t i = 0; i < an; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

static size_t c_len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

static void log_str(int level, const char *s) { proxy_log(level, s, c_len(s)); }

// ---- configuration: the contract with the agent ----
// One flat JSON object (RFC 8259). dapb_mesh/mesh/filter_config.py mirrors every limit below (a test reads these
// #defines). An entry the filter cannot take is refused alone, its key, a short code and the reason logged
// ("dapb: refused \"KEY\" (CODE): REASON"), and the rest applies; a refused scalar keeps the value of the
// configuration in force before (the defaults for the first one); a key left out takes its default. Only text
// that cannot be read as a JSON object at all is rejected whole, and then the configuration in force stays.
// proxy_on_configure never fails: Envoy would fail the plugin, and with it (FAIL_CLOSE) every request.
#define CONFIG_VERSION 1 // "version": the contract this filter reads
#define MAX_ROOTS 4
#define MAX_ROUTES 64 // "route:<name>" entries; more are refused
#define MAX_NAME 96 // bytes of a route name (UTF-8, after JSON escapes)
#define MAX_PREFIX 16 // bytes of urgent_prefix (after JSON escapes)
#define MAX_UINT 16777215 // hold_bytes and buffer_limit_bytes (a larger buffer limit is clamped to it)
#define MAX_HOLD_MS 60000
#define LOG_KEY_BYTES 60 // of a refused key as written in the JSON, in its log line
#define STR_(x) #x
#define STR(x) STR_(x)
struct route_urgency {
	char name[MAX_NAME];
	size_t len;
	int urgency_milli;
};
struct plugin {
	uint32_t root; // 0 = free slot
	struct route_urgency routes[MAX_ROUTES];
	int n_routes;
	int u_threshold, throughput_below, default_urgency; // thousandths
	uint32_t hold_bytes, hold_ms, buffer_limit_bytes;
	char urgent_prefix[MAX_PREFIX];
	size_t urgent_len;
};

static void plugin_defaults(struct plugin *p, uint32_t root)
{
	p->root = root;
	p->n_routes = 0;
	p->u_threshold = 500;
	p->throughput_below = 300;
	p->default_urgency = 400;
	p->hold_bytes = p->hold_ms = p->buffer_limit_bytes = 0;
	p->urgent_len = 0;
}

// A log line built in place (no libc).
struct line {
	char s[256];
	size_t n;
};
static void put(struct line *l, const char *s, size_t n)
{
	for (size_t i = 0; i < n && l->n < sizeof l->s; i++)
		l->s[l->n++] = s[i];
}
static void put_str(struct line *l, const char *s) { put(l, s, c_len(s)); }
static void put_uint(struct line *l, uint64_t v)
{
	char d[20];
	int k = 0;
	do
		d[k++] = (char)('0' + v % 10);
	while (v /= 10);
	while (k)
		put(l, &d[--k], 1);
}

static int refusals; // entries refused by the configuration being read

static void refuse(const char *key, size_t key_len, const char *code, const char *reason)
{
	struct line l = {.n = 0};
	put_str(&l, "dapb: refused \"");
	put(&l, key, key_len < LOG_KEY_BYTES ? key_len : LOG_KEY_BYTES);
	if (key_len > LOG_KEY_BYTES)
		put_str(&l, "...");
	put_str(&l, "\" (");
	put_str(&l, code);
	put_str(&l, "): ");
	put_str(&l, reason);
	proxy_log(LOG_WARN, l.s, l.n);
	refusals++;
}

// ---- a JSON reader: a cursor over the text; no allocation ----
struct json {
	const char *s;
	size_t n, i;
};
static int j_peek(const struct json *j) { return j->i < j->n ? (unsigned char)j->s[j->i] : -1; }
static int j_digit(int c) { return c >= '0' && c <= '9'; }
static void j_space(struct json *j)
{
	while (j_peek(j) == ' ' || j_peek(j) == '\t' || j_peek(j) == '\n' || j_peek(j) == '\r')
		j->i++;
}

static int j_hex4(struct json *j, uint32_t *v)
{
	*v = 0;
	for (int k = 0; k < 4; k++, j->i++) {
		int c = j_peek(j);
		int d = j_digit(c) ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return 0;
		*v = *v * 16 + (uint32_t)d;
	}
	return 1;
}

enum { STR_OK, STR_BAD, STR_UNTERMINATED };
// The string at the cursor (on its opening quote), decoded to UTF-8 into out[0..cap) when out is given; *len is
// its decoded length, also past cap. STR_BAD: an escape JSON does not have, a lone surrogate or a raw control
// character (the string is still read to its end); STR_UNTERMINATED: no closing quote.
static int j_string(struct json *j, char *out, size_t cap, size_t *len)
{
	int bad = 0;
	*len = 0;
	j->i++;
	for (;;) {
		int c = j_peek(j);
		if (c < 0)
			return STR_UNTERMINATED;
		j->i++;
		if (c == '"')
			return bad ? STR_BAD : STR_OK;
		uint32_t cp = (uint32_t)c; // a raw byte, or (escaped) a code point
		int escaped = 0;
		if (c < 0x20) {
			bad = 1;
		} else if (c == '\\') {
			static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
			int e = j_peek(j), k = 0;
			if (e < 0)
				return STR_UNTERMINATED;
			j->i++;
			while (from[k] && from[k] != e)
				k++;
			if (from[k]) {
				cp = (unsigned char)to[k];
			} else if (e == 'u' && j_hex4(j, &cp)) {
				escaped = 1;
				uint32_t low;
				if (cp >= 0xdc00 && cp <= 0xdfff) {
					bad = 1; // a low surrogate alone
				} else if (cp >= 0xd800 && cp <= 0xdbff) {
					if (j_peek(j) == '\\' && j->i + 1 < j->n && j->s[j->i + 1] == 'u' && (j->i += 2, j_hex4(j, &low)) &&
					    low >= 0xdc00 && low <= 0xdfff)
						cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
					else
						bad = 1; // a high surrogate without its low half
				}
			} else {
				bad = 1;
			}
		}
		char b[4];
		size_t nb = 1;
		if (!escaped || cp < 0x80) {
			b[0] = (char)cp;
		} else if (cp < 0x800) {
			b[0] = (char)(0xc0 | cp >> 6), b[1] = (char)(0x80 | (cp & 0x3f)), nb = 2;
		} else if (cp < 0x10000) {
			b[0] = (char)(0xe0 | cp >> 12), b[1] = (char)(0x80 | (cp >> 6 & 0x3f)), b[2] = (char)(0x80 | (cp & 0x3f));
			nb = 3;
		} else {
			b[0] = (char)(0xf0 | cp >> 18), b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
			b[2] = (char)(0x80 | (cp >> 6 & 0x3f)), b[3] = (char)(0x80 | (cp & 0x3f)), nb = 4;
		}
		for (size_t k = 0; k < nb; k++, (*len)++)
			if (out && *len < cap)
				out[*len] = b[k];
	}
}

// A number as read: mant * 10^exp (17 significant digits kept; lost: a non-zero digit past them).
struct number {
	int neg, lost;
	uint64_t mant;
	long long exp;
};

static size_t j_digits(struct json *j, struct number *x, int fraction)
{
	size_t count = 0;
	for (; j_digit(j_peek(j)); j->i++, count++) {
		int d = j_peek(j) - '0';
		if (x->mant < 10000000000000000ULL) {
			x->mant = x->mant * 10 + (uint64_t)d;
			x->exp -= fraction;
		} else {
			x->exp += !fraction;
			x->lost |= d != 0;
		}
	}
	return count;
}

// A JSON number at the cursor, in every form RFC 8259 allows: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
static int j_number(struct json *j, struct number *x)
{
	*x = (struct number){0};
	if (j_peek(j) == '-')
		x->neg = 1, j->i++;
	if (j_peek(j) == '0') {
		j->i++;
		if (j_digit(j_peek(j)))
			return 0; // no leading zeros
	} else if (!j_digits(j, x, 0)) {
		return 0;
	}
	if (j_peek(j) == '.' && (j->i++, !j_digits(j, x, 1)))
		return 0;
	if (j_peek(j) == 'e' || j_peek(j) == 'E') {
		j->i++;
		int sign = j_peek(j) == '-' ? -1 : 1;
		if (j_peek(j) == '-' || j_peek(j) == '+')
			j->i++;
		long long e = 0;
		if (!j_digit(j_peek(j)))
			return 0;
		for (; j_digit(j_peek(j)); j->i++)
			if (e < 1000000)
				e = e * 10 + (j_peek(j) - '0');
		x->exp += sign * e;
	}
	return 1;
}

// x * 10^shift rounded half up to an integer, if it is at most limit. *exact: nothing was rounded away.
static int scaled(const struct number *x, int shift, uint64_t limit, uint64_t *out, int *exact)
{
	uint64_t m = x->mant;
	long long e = x->exp + shift;
	int decides = 0; // the most significant digit dropped
	*exact = !x->lost;
	if (!m) {
		*out = 0;
		return 1;
	}
	for (; e > 0; e--) {
		if (m > limit / 10)
			return 0;
		m *= 10;
	}
	for (; e < 0 && m; e++) {
		decides = (int)(m % 10);
		if (decides)
			*exact = 0;
		m /= 10;
	}
	if (e < 0)
		decides = 0; // the digits left were all dropped; the one that decides is a zero further down
	m += decides >= 5;
	if (m > limit)
		return 0;
	*out = m;
	return 1;
}

// Skip one JSON value of any kind (nested up to 32 deep); 0 if the text there is not one.
static int j_skip(struct json *j, int depth)
{
	int c = j_peek(j);
	size_t len;
	struct number ignored;
	if (c == '"')
		return j_string(j, NULL, 0, &len) != STR_UNTERMINATED;
	if (c == '-' || j_digit(c))
		return j_number(j, &ignored);
	if (c == '{' || c == '[') {
		int close = c == '{' ? '}' : ']';
		if (depth >= 32)
			return 0;
		j->i++;
		j_space(j);
		if (j_peek(j) == close)
			return j->i++, 1;
		for (;;) {
			j_space(j);
			if (c == '{') {
				if (j_peek(j) != '"' || j_string(j, NULL, 0, &len) == STR_UNTERMINATED)
					return 0;
				j_space(j);
				if (j_peek(j) != ':')
					return 0;
				j->i++;
				j_space(j);
			}
			if (!j_skip(j, depth + 1))
				return 0;
			j_space(j);
			if (j_peek(j) == close)
				return j->i++, 1;
			if (j_peek(j) != ',')
				return 0;
			j->i++;
		}
	}
	static const char *const literals[] = {"true", "false", "null"};
	for (int k = 0; k < 3; k++) {
		size_t n = c_len(literals[k]);
		if (j->n - j->i >= n && str_eq(j->s + j->i, n, literals[k], n))
			return j->i += n, 1;
	}
	return 0;
}

// From a value that is not JSON to the ',' or '}' that ends its entry (strings and brackets stepped over);
// 0 if there is none.
static int j_recover(struct json *j)
{
	int depth = 0;
	size_t len;
	for (int c = j_peek(j); c >= 0; c = j_peek(j)) {
		if (c == '"') {
			if (j_string(j, NULL, 0, &len) == STR_UNTERMINATED)
				return 0;
			continue;
		}
		if (depth == 0 && (c == ',' || c == '}'))
			return 1;
		depth += (c == '{' || c == '[') - (c == '}' || c == ']');
		j->i++;
	}
	return 0;
}

enum { VALUE_NUMBER, VALUE_STRING, VALUE_OTHER, VALUE_NOT_JSON };
struct value {
	int kind, str; // str: STR_OK or STR_BAD for a string
	struct number num;
	size_t at, str_len; // where it starts; a string's decoded length
};

// One entry's value; 0 if it is not JSON (or not followed by ',' or '}').
static int j_value(struct json *j, struct value *v)
{
	int c = j_peek(j), ok;
	v->at = j->i;
	if (c == '"') {
		v->kind = VALUE_STRING;
		v->str = j_string(j, NULL, 0, &v->str_len);
		ok = v->str != STR_UNTERMINATED;
	} else if (c == '-' || j_digit(c)) {
		v->kind = VALUE_NUMBER;
		ok = j_number(j, &v->num);
	} else {
		v->kind = VALUE_OTHER;
		ok = j_skip(j, 0);
	}
	j_space(j);
	return ok && (j_peek(j) == ',' || j_peek(j) == '}');
}

// A number in [0, 1] as thousandths (rounded half up); otherwise the code, and *why.
static const char *as_milli(const struct value *v, int *out, const char **why)
{
	uint64_t m;
	int exact;
	if (v->kind == VALUE_NOT_JSON)
		return *why = "the value is not JSON", "not_json";
	if (v->kind != VALUE_NUMBER)
		return *why = "not a number", "not_a_number";
	if ((v->num.neg && v->num.mant) || !scaled(&v->num, 3, 1000, &m, &exact))
		return *why = "outside [0, 1]", "out_of_range";
	*out = (int)m;
	return NULL;
}

// An integer in [0, limit]; otherwise the code, and *why (*too_large: it is only too large).
static const char *as_uint(const struct value *v, uint64_t limit, uint64_t *out, const char **why, int *too_large)
{
	int exact;
	*too_large = 0;
	if (v->kind == VALUE_NOT_JSON)
		return *why = "the value is not JSON", "not_json";
	if (v->kind != VALUE_NUMBER)
		return *why = "not a number", "not_a_number";
	if (v->num.neg && v->num.mant)
		return *why = "negative", "out_of_range";
	if (!scaled(&v->num, 0, limit, out, &exact))
		return *too_large = 1, *why = "too large", "out_of_range";
	if (!exact)
		return *why = "not an integer", "not_an_integer";
	return NULL;
}

static char key[6 + MAX_NAME]; // the decoded key: the longest that can be taken is "route:" and a name

// One entry into p; what it cannot take is refused, a scalar then keeping last's value.
static void entry(struct plugin *p, const struct plugin *last, const struct json *j, size_t key_at, size_t key_raw,
		  int key_str, size_t kn, const struct value *v, int *hold_refused)
{
	const char *code = NULL, *why = "";
	uint64_t u;
	int milli, too_large;
#define KEY_IS(name) (kn == sizeof(name) - 1 && str_eq(key, kn, name, kn))
	if (key_str != STR_OK) {
		code = "bad_string", why = "the key has an escape JSON does not have, a lone surrogate or a control character";
	} else if (KEY_IS("version")) {
		if (!(code = as_uint(v, 1000000, &u, &why, &too_large)) && u != CONFIG_VERSION)
			code = "unsupported_version", why = "this filter reads version " STR(CONFIG_VERSION);
	} else if (KEY_IS("u_threshold") || KEY_IS("throughput_below") || KEY_IS("default_urgency")) {
		int *field = KEY_IS("u_threshold") ? &p->u_threshold
			     : KEY_IS("throughput_below") ? &p->throughput_below
							  : &p->default_urgency;
		const int *before = (const int *)((const char *)last + ((const char *)field - (const char *)p));
		code = as_milli(v, &milli, &why);
		*field = code ? *before : milli;
	} else if (KEY_IS("hold_bytes") || KEY_IS("hold_ms")) {
		int ms = KEY_IS("hold_ms");
		code = as_uint(v, ms ? MAX_HOLD_MS : MAX_UINT, &u, &why, &too_large);
		if (code)
			*hold_refused = 1;
		else if (ms)
			p->hold_ms = (uint32_t)u;
		else
			p->hold_bytes = (uint32_t)u;
		if (too_large)
			why = ms ? "over " STR(MAX_HOLD_MS) " ms" : "over " STR(MAX_UINT) " bytes";
	} else if (KEY_IS("buffer_limit_bytes")) {
		code = as_uint(v, MAX_UINT, &u, &why, &too_large);
		if (too_large) // the real limit is larger: holding under half of this one is still safe
			code = "clamped", why = "over " STR(MAX_UINT) " bytes: taken as " STR(MAX_UINT), u = MAX_UINT;
		else if (code)
			u = last->buffer_limit_bytes;
		p->buffer_limit_bytes = (uint32_t)u;
	} else if (KEY_IS("urgent_prefix")) {
		if (v->kind == VALUE_NOT_JSON)
			code = "not_json", why = "the value is not JSON";
		else if (v->kind != VALUE_STRING)
			code = "not_a_string", why = "not a string";
		else if (v->str != STR_OK)
			code = "bad_string", why = "an escape JSON does not have, a lone surrogate or a control character";
		else if (v->str_len > MAX_PREFIX)
			code = "too_long", why = "over " STR(MAX_PREFIX) " bytes";
		if (code) {
			p->urgent_len = last->urgent_len;
			for (size_t i = 0; i < last->urgent_len; i++)
				p->urgent_prefix[i] = last->urgent_prefix[i];
		} else {
			struct json at = {j->s, j->n, v->at};
			j_string(&at, p->urgent_prefix, MAX_PREFIX, &p->urgent_len);
		}
	} else if (kn >= 6 && str_eq(key, 6, "route:", 6)) {
		size_t n = kn - 6, found = 0;
		while (found < n && found < MAX_NAME && key[6 + found] != '~')
			found++;
		if (n == 0)
			code = "name_empty", why = "no route name";
		else if (n > MAX_NAME)
			code = "name_too_long", why = "route name over " STR(MAX_NAME) " bytes";
		else if (found < n)
			code = "name_has_tilde", why = "'~' separates a route from its class variant: the name never matches";
		else if (!(code = as_milli(v, &milli, &why))) {
			int r = 0;
			while (r < p->n_routes && !str_eq(p->routes[r].name, p->routes[r].len, key + 6, n))
				r++;
			if (r == MAX_ROUTES) {
				code = "too_many_routes", why = "more than " STR(MAX_ROUTES) " routes";
			} else {
				struct route_urgency *route = &p->routes[r];
				if (r == p->n_routes) { // a new route (a repeated one takes its newer value)
					p->n_routes++;
					for (size_t i = 0; i < n; i++)
						route->name[i] = key[6 + i];
					route->len = n;
				}
				route->urgency_milli = milli;
			}
		}
	} else {
		code = "unknown_key", why = "not an entry of configuration version " STR(CONFIG_VERSION);
	}
#undef KEY_IS
	if (code)
		refuse(j->s + key_at, key_raw, code, why);
}

// The configuration text into p, entry by entry (last: the configuration in force before, whose values refused
// scalars keep). Returns NULL, or why the text cannot be read as a JSON object at all.
static const char *parse_config(struct plugin *p, const struct plugin *last, const char *s, size_t n)
{
	struct json j = {s, n, 0};
	int hold_refused = 0;
	j_space(&j);
	if (j_peek(&j) != '{')
		return "not a JSON object";
	j.i++;
	j_space(&j);
	if (j_peek(&j) == '}')
		j.i++;
	else
		for (;;) {
			j_space(&j);
			if (j_peek(&j) != '"')
				return "a key is not a string";
			size_t key_at = j.i + 1, kn;
			int key_str = j_string(&j, key, sizeof key, &kn);
			if (key_str == STR_UNTERMINATED)
				return "a key has no closing quote";
			size_t key_raw = j.i - 1 - key_at;
			j_space(&j);
			if (j_peek(&j) != ':')
				return "a key without ':'";
			j.i++;
			j_space(&j);
			struct value v;
			if (!j_value(&j, &v)) { // not JSON: this entry is refused, the next one is read
				v.kind = VALUE_NOT_JSON;
				j.i = v.at;
				if (!j_recover(&j))
					return "a value without an end";
			}
			entry(p, last, &j, key_at, key_raw, key_str, kn, &v, &hold_refused);
			j_space(&j);
			if (j_peek(&j) == '}') {
				j.i++;
				break;
			}
			if (j_peek(&j) != ',')
				return "entries not separated by ','";
			j.i++;
		}
	if (hold_refused) { // B and T go together: a refused half keeps the pair in force
		p->hold_bytes = last->hold_bytes;
		p->hold_ms = last->hold_ms;
	} else if (p->hold_bytes && !p->hold_ms) { // a hold without a time bound is never allowed
		refuse("hold_bytes", 10, "unbounded_hold", "a hold needs hold_ms > 0");
		p->hold_bytes = last->hold_bytes;
		p->hold_ms = last->hold_ms;
	}
	return NULL;
}

// Ticks, VM-wide: any root context's tick serves every held stream of the VM, whatever root it started under.
// Envoy stops the timer of a root whose configuration was replaced while its streams live on, so a root must
// not rely on its own tick. tick_slack_ns: the longest recent interval between ticks (decays by 1/16 per tick).
static uint64_t last_tick_ns, tick_slack_ns = 5000000; // until ticks are seen: Envoy's usual 4-4.5 ms here
static struct plugin plugins[MAX_ROOTS];

// The configuration in force: the newest one configured in this VM. Envoy applies a new configuration (ECDS) as a
// new root context in the same VM while long-lived streams (telemetry streams live for hours) stay open under
// the old one; they take the new B and T too, after what they hold has been released. One DAPB configuration
// per VM: filters that need different configurations need different vm_ids.
static struct plugin *newest;

static struct plugin *find_plugin(uint32_t root)
{
	for (int i = 0; i < MAX_ROOTS; i++)
		if (plugins[i].root == root)
			return &plugins[i];
	return NULL;
}

// The configuration a stream of `root` follows: the newest in the VM, or its own root's if none is newer.
static struct plugin *in_force(uint32_t root)
{
	return newest && newest->root ? newest : find_plugin(root);
}

// ---- per-stream hold state (bounded: at most MAX_HELD streams hold at once; others pass through) ----
#define MAX_HELD 256
struct direction {
	uint64_t first_ns; // arrival of the oldest byte held (valid while paused)
	size_t buffered; // bytes Envoy holds for us, counted here (each call shows only the newest chunk)
	int paused; // Envoy is buffering this direction's body for us
};
struct held {
	uint32_t ctx; // 0 = free slot
	uint32_t root;
	int grpc; // gRPC framing: a message starts with a 5-byte header
	struct direction dir[2]; // STREAM_REQUEST, STREAM_RESPONSE
};
static struct held held[MAX_HELD];

// Root context of every live stream context (Envoy gives it at context creation).
#define MAX_CONTEXTS 1024
static uint32_t context_ids[MAX_CONTEXTS], context_roots[MAX_CONTEXTS];

static struct held *find_held(uint32_t ctx)
{
	for (int i = 0; i < MAX_HELD; i++)
		if (held[i].ctx == ctx)
			return &held[i];
	return NULL;
}

static uint32_t root_of(uint32_t ctx)
{
	for (int i = 0; i < MAX_CONTEXTS; i++)
		if (context_ids[i] == ctx)
			return context_roots[i];
	return 0;
}

static uint64_t now_ns(void)
{
	uint64_t t = 0;
	proxy_get_current_time_nanoseconds(&t);
	return t;
}

// Nothing held in this direction any more (Envoy has been told, or is about to be told, to go on).
static void clear(struct direction *d)
{
	d->paused = 0;
	d->first_ns = 0;
	d->buffered = 0;
}

static void release(struct held *h, int stream)
{
	struct direction *d = &h->dir[stream];
	if (d->paused) {
		proxy_set_effective_context(h->ctx);
		proxy_continue_stream(stream);
	}
	clear(d);
}

static void release_all(uint32_t root)
{
	for (int i = 0; i < MAX_HELD; i++)
		if (held[i].ctx && (!root || held[i].root == root)) {
			release(&held[i], STREAM_REQUEST);
			release(&held[i], STREAM_RESPONSE);
		}
}

// The most bytes one hold may reach: B(t), and never more than half the proxy's buffer limit (past the limit
// Envoy stops reading from the peer: the hold would then delay the sender, not just its bytes).
static size_t hold_cap(const struct plugin *p)
{
	size_t cap = p->hold_bytes;
	if (p->buffer_limit_bytes && p->buffer_limit_bytes / 2 < cap)
		cap = p->buffer_limit_bytes / 2;
	return cap;
}

// Would the oldest held byte pass hold_ms before the next tick can come (the last tick plus the longest recent
// interval)? Then this is the last moment to send it. A chunk arriving between ticks asks the same question, so
// it releases only what the next tick could not.
static int due(const struct plugin *p, const struct direction *d, uint64_t now)
{
	uint64_t next_tick = (last_tick_ns ? last_tick_ns : now) + tick_slack_ns;
	if (next_tick < now)
		next_tick = now; // the tick is overdue: it may come at any moment
	return next_tick - d->first_ns >= (uint64_t)p->hold_ms * 1000000;
}

// Does the newest chunk (the body buffer Envoy shows us) begin with the urgent prefix?
static int urgent_chunk(const struct plugin *p, const struct held *h, int stream, size_t size)
{
	size_t at = h->grpc ? 5 : 0;
	if (!p->urgent_len || at + p->urgent_len > size)
		return 0;
	char *data = NULL;
	size_t got = 0;
	int buffer = stream == STREAM_REQUEST ? BUFFER_REQUEST_BODY : BUFFER_RESPONSE_BODY;
	if (proxy_get_buffer_bytes(buffer, at, p->urgent_len, &data, &got) != OK || !data)
		return 0;
	int urgent = str_eq(data, got, p->urgent_prefix, p->urgent_len);
	dapb_free(data);
	return urgent;
}

// `size` is the newest chunk's length: what Envoy holds for us is counted here.
static int32_t on_body(uint32_t ctx, int stream, size_t size, int32_t end_of_stream)
{
	struct held *h = find_held(ctx);
	struct plugin *p = h ? in_force(h->root) : NULL;
	if (!h || !p)
		return ACTION_CONTINUE;
	struct direction *d = &h->dir[stream];
	size_t total = (d->paused ? d->buffered : 0) + size;
	uint64_t now = now_ns();
	if (end_of_stream || !p->hold_bytes || total >= hold_cap(p) || urgent_chunk(p, h, stream, size) ||
	    (d->paused && due(p, d, now))) {
		clear(d); // returning CONTINUE releases everything Envoy buffered, in order
		return ACTION_CONTINUE;
	}
	if (!d->paused)
		d->first_ns = now;
	d->paused = 1;
	d->buffered = total;
	return ACTION_HOLD_WITH_FLOW_CONTROL;
}

WASM_EXPORT(proxy_on_request_body) int32_t proxy_on_request_body(uint32_t ctx, size_t size, int32_t end_of_stream)
{
	return on_body(ctx, STREAM_REQUEST, size, end_of_stream);
}

WASM_EXPORT(proxy_on_response_body) int32_t proxy_on_response_body(uint32_t ctx, size_t size, int32_t end_of_stream)
{
	return on_body(ctx, STREAM_RESPONSE, size, end_of_stream);
}

// Trailers end a body: what is held goes with them (CONTINUE flushes the buffered body first).
static int32_t on_trailers(uint32_t ctx, int stream)
{
	struct held *h = find_held(ctx);
	if (h)
		clear(&h->dir[stream]);
	return ACTION_CONTINUE;
}

WASM_EXPORT(proxy_on_request_trailers) int32_t proxy_on_request_trailers(uint32_t ctx, size_t n)
{
	return on_trailers(ctx, STREAM_REQUEST);
}

WASM_EXPORT(proxy_on_response_trailers) int32_t proxy_on_response_trailers(uint32_t ctx, size_t n)
{
	return on_trailers(ctx, STREAM_RESPONSE);
}

static int any_held(void)
{
	for (int i = 0; i < MAX_HELD; i++)
		if (held[i].ctx && (held[i].dir[STREAM_REQUEST].paused || held[i].dir[STREAM_RESPONSE].paused))
			return 1;
	return 0;
}

static int any_plugin_holds(void)
{
	for (int i = 0; i < MAX_ROOTS; i++)
		if (plugins[i].root && plugins[i].hold_bytes)
			return 1;
	return 0;
}

WASM_EXPORT(proxy_on_tick) void proxy_on_tick(uint32_t root_id)
{
	uint64_t now = now_ns();
	if (last_tick_ns) {
		uint64_t interval = now - last_tick_ns, decayed = tick_slack_ns - tick_slack_ns / 16;
		tick_slack_ns = interval > decayed ? interval : decayed;
		if (tick_slack_ns < 1000000)
			tick_slack_ns = 1000000;
	}
	last_tick_ns = now;
	for (int i = 0; i < MAX_HELD; i++) {
		if (!held[i].ctx)
			continue;
		struct plugin *p = in_force(held[i].root);
		for (int s = STREAM_REQUEST; s <= STREAM_RESPONSE; s++)
			if (held[i].dir[s].paused && (!p || due(p, &held[i].dir[s], now)))
				release(&held[i], s);
	}
	if (!any_plugin_holds() && !any_held()) {
		proxy_set_effective_context(root_id);
		proxy_set_tick_period_milliseconds(0); // nothing to watch any more
	}
}

WASM_EXPORT(proxy_on_configure) int32_t proxy_on_configure(uint32_t root_id, size_t size)
{
	static struct plugin parsed, defaults; // built aside: text that cannot be read changes nothing
	const struct plugin *last = newest && newest->root ? newest : NULL;
	if (!last) {
		plugin_defaults(&defaults, 0);
		last = &defaults;
	}
	proxy_set_effective_context(root_id);
	plugin_defaults(&parsed, root_id);
	refusals = 0;
	char *data = NULL;
	size_t got = 0;
	const char *rejected = NULL;
	if (size == 0) {
		log_str(LOG_INFO, "dapb: no configuration, defaults in force");
	} else if (proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &data, &got) != OK || !data) {
		rejected = "the host did not give it";
	} else {
		rejected = parse_config(&parsed, last, data, got);
		dapb_free(data);
	}
	if (rejected) { // the configuration in force (or the defaults) stays, now also for this root
		parsed = *last;
		parsed.root = root_id;
	}
	struct plugin *p = find_plugin(root_id);
	if (!p)
		p = find_plugin(0);
	for (int i = 0; !p && i < MAX_ROOTS; i++)
		if (&plugins[i] != newest)
			p = &plugins[i]; // all slots taken by replaced roots (their streams follow the newest): reuse one
	if (!rejected)
		release_all(0); // what is held was held under the configuration being replaced: it goes now
	*p = parsed;
	newest = p;
	// Tick while this configuration holds or anything in the VM is still held (perhaps under a root whose
	// timer Envoy has stopped). The timer is this root's: release_all() made a stream's context effective.
	proxy_set_effective_context(root_id);
	proxy_set_tick_period_milliseconds(any_plugin_holds() || any_held() ? 1 : 0);
	struct line l = {.n = 0};
	if (rejected) {
		put_str(&l, "dapb: configuration rejected (");
		put_str(&l, rejected);
		put_str(&l, "): the configuration in force stays");
	} else {
		put_str(&l, "dapb: configuration loaded: version " STR(CONFIG_VERSION) ", ");
		put_uint(&l, (uint64_t)p->n_routes);
		put_str(&l, " routes, ");
		put_uint(&l, (uint64_t)refusals);
		put_str(&l, " entries refused");
	}
	proxy_log(rejected ? LOG_WARN : LOG_INFO, l.s, l.n);
	return 1; // never fail: Envoy would fail the plugin, and with it every request under FAIL_CLOSE
}

WASM_EXPORT(proxy_on_vm_start) int32_t proxy_on_vm_start(uint32_t root_id, size_t size) { return 1; }

WASM_EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t id, uint32_t parent)
{
	if (!parent)
		return; // a root context: it gets its slot when configured
	for (int i = 0; i < MAX_CONTEXTS; i++)
		if (!context_ids[i]) {
			context_ids[i] = id;
			context_roots[i] = parent;
			return;
		}
}

static void forget(uint32_t id)
{
	struct held *h = find_held(id);
	if (h)
		h->ctx = 0; // Envoy finishes the stream; nothing is held by the filter itself
	for (int i = 0; i < MAX_CONTEXTS; i++)
		if (context_ids[i] == id)
			context_ids[i] = 0;
	struct plugin *p = find_plugin(id);
	if (p) { // a root context goes: its streams are released, its slot freed
		release_all(id);
		p->root = 0;
		if (newest == p) { // the configuration in force goes: another live one takes over, if any
			newest = NULL;
			for (int i = 0; i < MAX_ROOTS; i++)
				if (plugins[i].root)
					newest = &plugins[i];
		}
	}
}

WASM_EXPORT(proxy_on_done) int32_t proxy_on_done(uint32_t id)
{
	forget(id);
	return 1;
}
WASM_EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t id) { forget(id); }
WASM_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

// ---- RFC 9218 Priority: an RFC 8941 Dictionary, e.g. "u=1, i", parsed as RFC 8941 section 4.2 says ----
// No allocation: a cursor over the header value; only the last `u` is kept. Python has the same parser
// (dapb_mesh/policy/structured_fields.py); tests/test_priority_rfc9218.py checks they agree.
struct sf {
	const char *s;
	size_t n, i;
};
enum { SF_FAIL = -1, SF_OTHER = 0, SF_SMALL_INT = 1 }; // SF_SMALL_INT: an integer in 0..7
static int sf_peek(const struct sf *p) { return p->i < p->n ? (unsigned char)p->s[p->i] : -1; }
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_lower(int c) { return c >= 'a' && c <= 'z'; }
static int is_alpha(int c) { return is_lower(c) || (c >= 'A' && c <= 'Z'); }
static int in_set(int c, const char *set)
{
	while (*set)
		if (c == *set++)
			return 1;
	return 0;
}
static int is_b64(int c) { return is_alpha(c) || is_digit(c) || c == '+' || c == '/'; }

static void sf_skip(struct sf *p, int tabs)
{
	while (sf_peek(p) == ' ' || (tabs && sf_peek(p) == '\t'))
		p->i++;
}

// 4.2.3.3: returns the key's length, 0 if there is no key here.
static size_t sf_key(struct sf *p)
{
	size_t start = p->i;
	if (!is_lower(sf_peek(p)) && sf_peek(p) != '*')
		return 0;
	while (is_lower(sf_peek(p)) || is_digit(sf_peek(p)) || in_set(sf_peek(p), "_-.*"))
		p->i++;
	return p->i - start;
}

// 4.2.4: up to 15 digits, or a decimal of up to 12 "." 1..3. *small: the integer if in 0..7 ("-0" is 0).
static int sf_number(struct sf *p, int *small)
{
	int neg = sf_peek(p) == '-', v = 0;
	p->i += neg;
	if (!is_digit(sf_peek(p)))
		return SF_FAIL;
	size_t start = p->i, dot = 0; // dot: 1 + the position of "." in the number, 0 for none
	for (int c = sf_peek(p); is_digit(c) || (c == '.' && !dot); c = sf_peek(p)) {
		if (c == '.') {
			if (p->i - start > 12)
				return SF_FAIL;
			dot = p->i - start + 1;
		} else if (v <= 7)
			v = v * 10 + (c - '0'); // saturates above 7: only 0..7 matter
		p->i++;
		if (p->i - start > (dot ? 16u : 15u))
			return SF_FAIL;
	}
	if (dot)
		return p->i - start - dot >= 1 && p->i - start - dot <= 3 ? SF_OTHER : SF_FAIL;
	*small = v;
	return v <= 7 && (!neg || v == 0) ? SF_SMALL_INT : SF_OTHER;
}

// 4.2.3.1 and 4.2.5-4.2.8 (RFC 8941 types only).
static int sf_bare_item(struct sf *p, int *small)
{
	int c = sf_peek(p);
	if (c == '-' || is_digit(c))
		return sf_number(p, small);
	p->i++;
	if (c == '"') { // printable ASCII; only \" and \\ escape
		for (c = sf_peek(p); c != '"'; c = sf_peek(p)) {
			if (c == '\\') {
				p->i++;
				c = sf_peek(p);
				if (c != '"' && c != '\\')
					return SF_FAIL;
			} else if (c < 0x20 || c > 0x7e)
				return SF_FAIL; // also the end of the value (-1)
			p->i++;
		}
		p->i++;
		return SF_OTHER;
	}
	if (c == '*' || is_alpha(c)) { // token: tchar, ":" and "/"
		while (is_alpha(sf_peek(p)) || is_digit(sf_peek(p)) || in_set(sf_peek(p), "!#$%&'*+-.^_`|~:/"))
			p->i++;
		return SF_OTHER;
	}
	if (c == ':') { // base64 that decodes: "=" only to pad the last quantum; unpadded tails are accepted
		size_t data = 0, pad = 0;
		for (; is_b64(sf_peek(p)); p->i++)
			data++;
		for (; sf_peek(p) == '='; p->i++)
			pad++;
		if (sf_peek(p) != ':' || data % 4 == 1 || (pad && (pad > 2 || (data + pad) % 4)))
			return SF_FAIL;
		p->i++;
		return SF_OTHER;
	}
	if (c == '?' && (sf_peek(p) == '0' || sf_peek(p) == '1')) {
		p->i++;
		return SF_OTHER;
	}
	return SF_FAIL;
}

// 4.2.3.2: parameters are checked, never used.
static int sf_parameters(struct sf *p)
{
	int ignored;
	while (sf_peek(p) == ';') {
		p->i++;
		sf_skip(p, 0);
		if (!sf_key(p))
			return 0;
		if (sf_peek(p) == '=') {
			p->i++;
			if (sf_bare_item(p, &ignored) == SF_FAIL)
				return 0;
		}
	}
	return 1;
}

// 4.2.1.2
static int sf_inner_list(struct sf *p)
{
	int ignored;
	p->i++; // the "("
	for (;;) {
		sf_skip(p, 0);
		if (sf_peek(p) == ')') {
			p->i++;
			return sf_parameters(p);
		}
		if (sf_bare_item(p, &ignored) == SF_FAIL || !sf_parameters(p))
			return 0;
		if (sf_peek(p) != ' ' && sf_peek(p) != ')')
			return 0; // items are separated by SP
	}
}

// Urgency in thousandths from the last `u` of the Dictionary, or -1: the header is not a valid Dictionary (then it
// is ignored as a whole, RFC 8941 4.2), has no `u`, or its `u` is not an integer 0..7 (ignored, RFC 9218 section 4).
int priority_urgency_milli(const char *s, size_t n)
{
	struct sf p = {s, n, 0};
	int u = -1;
	sf_skip(&p, 0);
	while (p.i < p.n) { // 4.2.2
		size_t at = p.i, len = sf_key(&p);
		int kind = SF_OTHER, small = -1, ok;
		if (!len)
			return -1;
		if (sf_peek(&p) != '=') {
			ok = sf_parameters(&p); // a bare key is the boolean true
		} else if (p.i++, sf_peek(&p) == '(') {
			ok = sf_inner_list(&p);
		} else {
			kind = sf_bare_item(&p, &small);
			ok = kind != SF_FAIL && sf_parameters(&p);
		}
		if (!ok)
			return -1;
		if (len == 1 && s[at] == 'u') // a later u replaces an earlier one, even with a value that is ignored
			u = kind == SF_SMALL_INT ? small : -1;
		sf_skip(&p, 1);
		if (p.i == p.n)
			break;
		if (s[p.i++] != ',')
			return -1;
		sf_skip(&p, 1);
		if (p.i == p.n)
			return -1; // a trailing comma
	}
	return u < 0 ? -1 : (7 - u) * 1000 / 7;
}

static int route_urgency(const struct plugin *p)
{
	char *name = NULL;
	size_t len = 0;
	// Envoy's attribute is xds.route_name (path elements separated by NUL); older hosts call it route_name.
	if ((proxy_get_property("xds\0route_name", 14, &name, &len) != OK || !name) &&
	    (proxy_get_property("route_name", 10, &name, &len) != OK || !name))
		return -1;
	for (size_t i = 0; i < len; i++) { // class variants of a route are named "<route>~<class>"
		if (name[i] == '~') {
			len = i;
			break;
		}
	}
	int found = -1;
	for (int r = 0; r < p->n_routes; r++)
		if (str_eq(name, len, p->routes[r].name, p->routes[r].len))
			found = p->routes[r].urgency_milli;
	dapb_free(name);
	return found;
}

static int header_starts_with(int map, const char *key, size_t key_len, const char *prefix, size_t n)
{
	char *value = NULL;
	size_t len = 0;
	if (proxy_get_header_map_value(map, key, key_len, &value, &len) != OK || !value)
		return 0;
	int yes = len >= n && str_eq(value, n, prefix, n);
	dapb_free(value);
	return yes;
}

WASM_EXPORT(proxy_on_request_headers)
int32_t proxy_on_request_headers(uint32_t ctx, size_t headers, int32_t end_of_stream)
{
	struct plugin *p = in_force(root_of(ctx));
	if (!p)
		return ACTION_CONTINUE; // no configured root: leave the request alone
	int u = -1;
	char *prio = NULL;
	size_t prio_len = 0;
	if (proxy_get_header_map_value(MAP_REQUEST_HEADERS, "priority", 8, &prio, &prio_len) == OK && prio) {
		u = priority_urgency_milli(prio, prio_len);
		dapb_free(prio);
	}
	if (u < 0)
		u = route_urgency(p);
	if (u < 0)
		u = p->default_urgency;
	if (u > p->u_threshold)
		proxy_replace_header_map_value(MAP_REQUEST_HEADERS, "x-dapb-class", 12, "latency", 7);
	else if (u < p->throughput_below) {
		proxy_replace_header_map_value(MAP_REQUEST_HEADERS, "x-dapb-class", 12, "throughput", 10);
		// Every throughput stream gets a slot, held or not yet: a later configuration may bring a hold while it
		// is open. Both directions may hold: the response may stream even after a short request.
		struct held *slot = find_held(0);
		if (slot) {
			struct held fresh = {.ctx = ctx, .root = root_of(ctx)};
			fresh.grpc = header_starts_with(MAP_REQUEST_HEADERS, "content-type", 12, "application/grpc", 16);
			*slot = fresh;
		}
	} else
		proxy_remove_header_map_value(MAP_REQUEST_HEADERS, "x-dapb-class", 12); // a client cannot pick it
	return ACTION_CONTINUE;
}
