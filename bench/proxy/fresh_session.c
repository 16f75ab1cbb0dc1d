/* LD_PRELOAD for wrk: forget the TLS session when wrk reuses its SSL object for the next connection
 * (wrk reconnects with SSL_clear, which keeps the session, so its next handshake resumes it). With this,
 * every connection is a new client: a full handshake. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

int SSL_clear(SSL *ssl) {
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (real_clear == NULL) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    int cleared = real_clear(ssl);
    set_session(ssl, NULL);
    return cleared;
}
