/*
 * fetch_c: the bundled `fetch` task written in C, to show a task in another language using
 * a capability. Its input is the http capability's request as it is ({"url": "..."},
 * optionally "method", "headers", "body"), passed on unchanged through the host call
 * "taskhost" "call" (docs/PROTOCOL.md, "Capabilities"); the answer,
 * {"status": N, "headers": {...}, "body": "..."}, is its output.
 *
 * A refusal (an origin the manifest does not list, say) is written to stderr and the task
 * exits with status 1, so it fails with the host's message, which says "not allowed".
 *
 * Build (Debian 12: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32):
 *     clang --target=wasm32-wasi -O2 -o fetch_c.wasm fetch_c.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The one host call: capability name and JSON request in, JSON response out. Returns 0
 * (success), 1 (error: {"code", "message"}) or 2 (the buffer is too small: the length it
 * needs is at *response_len; call "response" to collect it). */
__attribute__((import_module("taskhost"), import_name("call")))
int32_t taskhost_call(const char *name, size_t name_len, const char *request,
                      size_t request_len, char *response, size_t response_cap,
                      uint32_t *response_len);

enum { CALL_OK = 0, CALL_ERROR = 1, CALL_TOO_SMALL = 2 };

/* The largest input read: the host caps a request at 1 MiB. */
#define MAX_INPUT (1u << 20)

static int call(const char *name, const char *request, size_t request_len, char **response,
                uint32_t *response_len) {
    size_t cap = 4096;
    char *buffer = malloc(cap);
    if (buffer == NULL) return CALL_ERROR;
    int32_t status = taskhost_call(name, strlen(name), request, request_len, buffer, cap,
                                   response_len);
    if (status == CALL_TOO_SMALL) {
        /* The host kept the response: collect it into a buffer of the size it said. */
        free(buffer);
        cap = *response_len;
        buffer = malloc(cap);
        if (buffer == NULL) return CALL_ERROR;
        status = taskhost_call("response", 8, "", 0, buffer, cap, response_len);
    }
    *response = buffer;
    return status;
}

int main(void) {
    char *input = malloc(MAX_INPUT + 1);
    if (input == NULL) return 1;
    size_t length = fread(input, 1, MAX_INPUT + 1, stdin);
    if (length > MAX_INPUT) {
        fputs("fetch_c: the input is over 1 MiB, the most one request may be\n", stderr);
        return 1;
    }
    char *response = NULL;
    uint32_t response_len = 0;
    int status = call("http", input, length, &response, &response_len);
    if (response == NULL) {
        fputs("fetch_c: out of memory\n", stderr);
        return 1;
    }
    if (status != CALL_OK) {
        fwrite(response, 1, response_len, stderr);
        fputc('\n', stderr);
        return 1;
    }
    fwrite(response, 1, response_len, stdout);
    return 0;
}
