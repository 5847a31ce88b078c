#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t pos;
    char *err;
    size_t errlen;
    int depth;
} parser;

static jval *parse_value(parser *p);

static void fail(parser *p, const char *what) {
    if (p->err && p->err[0] == '\0') snprintf(p->err, p->errlen, "%s at byte %zu", what, p->pos);
}

static void skip_ws(parser *p) {
    while (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r') p->pos++;
}

static jval *new_val(jtype t) {
    jval *v = calloc(1, sizeof(*v));
    if (v) v->type = t;
    return v;
}

static int push(jval *v, char *key, jval *item) {
    jval **items = realloc(v->items, (v->len + 1) * sizeof(*items));
    if (!items) return -1;
    v->items = items;
    if (v->type == J_OBJ) {
        char **keys = realloc(v->keys, (v->len + 1) * sizeof(*keys));
        if (!keys) return -1;
        v->keys = keys;
        v->keys[v->len] = key;
    }
    v->items[v->len++] = item;
    return 0;
}

static void put_utf8(char *out, size_t *n, unsigned cp) {
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | (cp >> 6));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | (cp >> 12));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | (cp >> 18));
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static char *parse_string(parser *p) {
    if (p->s[p->pos] != '"') { fail(p, "expected a string"); return NULL; }
    p->pos++;
    size_t start = p->pos, cap = 0;
    while (p->s[start + cap] && p->s[start + cap] != '"') cap += (p->s[start + cap] == '\\') ? 2 : 1;
    char *out = malloc(cap * 2 + 8); /* \uXXXX expands to at most 4 bytes for 6 of input */
    if (!out) return NULL;
    size_t n = 0;
    for (;;) {
        char c = p->s[p->pos];
        if (c == '\0') { free(out); fail(p, "unterminated string"); return NULL; }
        p->pos++;
        if (c == '"') break;
        if (c != '\\') { out[n++] = c; continue; }
        char e = p->s[p->pos++];
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p->s + p->pos, &cp)) { free(out); fail(p, "bad \\u escape"); return NULL; }
            p->pos += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
                unsigned lo;
                if (!hex4(p->s + p->pos + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p->pos += 6;
                }
            }
            put_utf8(out, &n, cp);
            break;
        }
        default: free(out); fail(p, "bad escape"); return NULL;
        }
    }
    out[n] = '\0';
    return out;
}

static jval *parse_number(parser *p) {
    const char *start = p->s + p->pos;
    char *end = NULL;
    double d = strtod(start, &end);
    if (end == start) { fail(p, "bad number"); return NULL; }
    jval *v = new_val(J_NUM);
    if (!v) return NULL;
    v->num = d;
    if (start[0] != '-') {
        char *iend = NULL;
        unsigned long long u = strtoull(start, &iend, 10);
        v->u64 = (iend == end) ? u : (unsigned long long)d;
    }
    p->pos += (size_t)(end - start);
    return v;
}

static jval *parse_container(parser *p, jtype t) {
    char close = (t == J_OBJ) ? '}' : ']';
    jval *v = new_val(t);
    if (!v) return NULL;
    p->pos++;
    skip_ws(p);
    if (p->s[p->pos] == close) { p->pos++; return v; }
    for (;;) {
        char *key = NULL;
        skip_ws(p);
        if (t == J_OBJ) {
            key = parse_string(p);
            if (!key) { json_free(v); return NULL; }
            skip_ws(p);
            if (p->s[p->pos] != ':') { free(key); json_free(v); fail(p, "expected ':'"); return NULL; }
            p->pos++;
        }
        jval *item = parse_value(p);
        if (!item || push(v, key, item)) { free(key); json_free(item); json_free(v); return NULL; }
        skip_ws(p);
        if (p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->s[p->pos] == close) { p->pos++; return v; }
        json_free(v);
        fail(p, "expected ',' or a closing bracket");
        return NULL;
    }
}

static jval *parse_value(parser *p) {
    skip_ws(p);
    if (++p->depth > 64) { fail(p, "nested too deeply"); return NULL; }
    jval *v = NULL;
    char c = p->s[p->pos];
    if (c == '{') v = parse_container(p, J_OBJ);
    else if (c == '[') v = parse_container(p, J_ARR);
    else if (c == '"') {
        char *s = parse_string(p);
        if (s && (v = new_val(J_STR))) v->str = s; else free(s);
    } else if (c == '-' || (c >= '0' && c <= '9')) v = parse_number(p);
    else if (!strncmp(p->s + p->pos, "true", 4)) { p->pos += 4; if ((v = new_val(J_BOOL))) v->boolean = 1; }
    else if (!strncmp(p->s + p->pos, "false", 5)) { p->pos += 5; v = new_val(J_BOOL); }
    else if (!strncmp(p->s + p->pos, "null", 4)) { p->pos += 4; v = new_val(J_NULL); }
    else fail(p, "unexpected character");
    p->depth--;
    return v;
}

jval *json_parse(const char *text, char *err, size_t errlen) {
    parser p = {text, 0, err, errlen, 0};
    if (err && errlen) err[0] = '\0';
    jval *v = parse_value(&p);
    if (!v) return NULL;
    skip_ws(&p);
    if (p.s[p.pos] != '\0') { json_free(v); fail(&p, "trailing text"); return NULL; }
    return v;
}

void json_free(jval *v) {
    if (!v) return;
    for (size_t i = 0; i < v->len; i++) {
        json_free(v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
    free(v);
}

const jval *json_get(const jval *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

const char *json_str(const jval *v, const char *fallback) {
    return (v && v->type == J_STR) ? v->str : fallback;
}

unsigned long long json_u64(const jval *v, unsigned long long fallback) {
    return (v && v->type == J_NUM && v->num >= 0) ? v->u64 : fallback;
}

double json_num(const jval *v, double fallback) {
    return (v && v->type == J_NUM) ? v->num : fallback;
}
