/* listen.h — `kzhook listen`: a local receiver for trying kzhook on one machine (README
 * "Walkthrough"). It answers the callback handshake (echoes validationToken), prints every
 * delivery (headers, pretty JSON body) and whether its Standard Webhooks signature verifies with
 * the --secret given. Plain HTTP on 127.0.0.1 by default: pair it with
 * `serve --allow-private-targets --allow-http-callbacks`. */
#ifndef KZ_LISTEN_H
#define KZ_LISTEN_H

/** Runs `kzhook listen [--host H] [--port N] [--secret whsec_...]` (argv after "listen") until
 * SIGINT/SIGTERM. Returns the exit code. */
int kz_listen_main(int argc, char **argv);

#endif
