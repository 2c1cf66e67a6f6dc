/* SPDX-License-Identifier: GPL-2.0 */
/* What the forwarder tells the Python side (status.c): JSON lines on stdout
 * (ready, stats, anomaly, exit; flightrec/record/forwarder.py reads them) and
 * the --stats file. Read-only over the context. */
#ifndef FLIGHTREC_STATUS_H
#define FLIGHTREC_STATUS_H

struct fwd;

/* The --stats JSON, once the port threads have stopped (it reads their rings):
 * 0, or -1 after saying on stderr why PATH could not be written. */
int status_write_stats(const struct fwd *f, const char *path, int exit_code, double elapsed);
void status_print_stats_event(const struct fwd *f, double t);
void status_print_ready(const struct fwd *f);
void status_print_anomaly(const struct fwd *f);
void status_print_exit(const struct fwd *f, int code, double t);

#endif
