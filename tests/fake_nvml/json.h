/* A small JSON reader for the stand-in NVML library's scenario files.
 *
 * The stand-in library must load into any process (pynvml's, the collector's, a systemd unit's) with no
 * dependency beyond libc, so it carries this reader instead of linking a JSON library.  It parses the whole
 * document into a tree; numbers are kept as double (exact up to 2^53, enough for byte counts and microsecond
 * timestamps) and as the unsigned 64-bit value of their text when they are non-negative integers.
 */
#ifndef FAKE_NVML_JSON_H
#define FAKE_NVML_JSON_H

#include <stddef.h>

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    double num;
    unsigned long long u64; /* exact value of a non-negative integer literal */
    int boolean;
    char *str;              /* J_STR: value; */
    struct jval **items;    /* J_ARR / J_OBJ: children */
    char **keys;            /* J_OBJ: keys, parallel to items */
    size_t len;
} jval;

/* Parses text; returns NULL and fills err (a message with the byte offset) on a syntax error. */
jval *json_parse(const char *text, char *err, size_t errlen);
void json_free(jval *v);

/* Lookups that tolerate NULL and type mismatches (they return NULL / the fallback). */
const jval *json_get(const jval *obj, const char *key);
const char *json_str(const jval *v, const char *fallback);
unsigned long long json_u64(const jval *v, unsigned long long fallback);
double json_num(const jval *v, double fallback);

#endif
