/*
 * cli_signal — signal handling while the CLI runs a command (see cli_internal.h).
 */
#include "cli/cli_internal.h"

#include <signal.h>
#include <string.h>

volatile sig_atomic_t cli_signal_caught;
volatile sig_atomic_t cli_winch_caught;

static const int cli_signals[CLI_NSIGNALS] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH};

static void cli_on_signal(int sig)
{
    if (sig == SIGWINCH) {
        cli_winch_caught = 1;
        return;
    }
    if (!cli_signal_caught)
        cli_signal_caught = sig;
    /* Give the user their terminal back at once, whatever the main loop is doing. */
    cli_tty_restore();
}

void cli_signals_setup(struct cli_sigstate *st, struct client *c)
{
    sigset_t block;
    sigemptyset(&block);
    for (size_t i = 0; i < CLI_NSIGNALS; i++)
        sigaddset(&block, cli_signals[i]);
    sigprocmask(SIG_BLOCK, &block, &st->old_mask);
    st->wait_mask = st->old_mask;
    cli_signal_caught = 0;
    cli_winch_caught = 0;
    for (size_t i = 0; i < CLI_NSIGNALS; i++) {
        int sig = cli_signals[i];
        st->installed[i] = false;
        if (sigaction(sig, NULL, &st->old_act[i]) < 0)
            continue;
        /* A signal ignored by whoever started us (nohup, `cmd &` in a script) stays ignored. */
        if (st->old_act[i].sa_handler == SIG_IGN)
            continue;
        struct sigaction sa = {.sa_handler = cli_on_signal};
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) == 0) {
            st->installed[i] = true;
            sigdelset(&st->wait_mask, sig);
        }
    }
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &st->old_pipe);
    if (c)
        c->wait_mask = &st->wait_mask;
}

void cli_signals_restore(struct cli_sigstate *st, struct client *c)
{
    if (c) {
        c->wait_mask = NULL;
        c->cancel = NULL;
    }
    /* Deliver anything pending to our handler first, then put the old handlers back. */
    sigprocmask(SIG_SETMASK, &st->old_mask, NULL);
    for (size_t i = 0; i < CLI_NSIGNALS; i++)
        if (st->installed[i])
            sigaction(cli_signals[i], &st->old_act[i], NULL);
    sigaction(SIGPIPE, &st->old_pipe, NULL);
}
