/*
 * digest — sha256 through libcrypto's EVP interface.
 */
#include "image/digest.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

int digest_init(struct digest_ctx *c)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return -ENOMEM;
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return -ENOMEM;
    }
    c->md = md;
    return 0;
}

void digest_update(struct digest_ctx *c, const void *p, size_t n)
{
    /* EVP_DigestUpdate on an initialised sha256 context only fails on a NULL context. */
    EVP_DigestUpdate(c->md, p, n);
}

void digest_final(struct digest_ctx *c, char out[DIGEST_STRLEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(c->md, md, &len);
    memcpy(out, "sha256:", 7);
    for (unsigned i = 0; i < 32; i++) {
        out[7 + 2 * i] = hex[md[i] >> 4];
        out[8 + 2 * i] = hex[md[i] & 15];
    }
    out[71] = '\0';
    digest_free(c);
}

void digest_free(struct digest_ctx *c)
{
    EVP_MD_CTX_free(c->md);
    c->md = NULL;
}

int digest_buffer(const void *p, size_t n, char out[DIGEST_STRLEN])
{
    struct digest_ctx c;
    int r = digest_init(&c);
    if (r < 0)
        return r;
    digest_update(&c, p, n);
    digest_final(&c, out);
    return 0;
}

int digest_parse(const char *s, char hex_out[65])
{
    if (!s || strncmp(s, "sha256:", 7) != 0)
        return -EINVAL;
    s += 7;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return -EINVAL;
    if (s[64] != '\0')
        return -EINVAL;
    memcpy(hex_out, s, 65);
    return 0;
}

int digest_valid(const char *s)
{
    char hex[65];
    return s && digest_parse(s, hex) == 0;
}
