// bin/train: fine-tune or train GPT-2. See bin/train --help and README.md.
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "train/cli.h"
#include "train/default_job.h"
#include "train/dist.h"
#include "train/trainer.h"

// The run a stop signal stops; null whenever no Trainer is alive (a handler must not reach a destroyed one).
static std::atomic<tune::Trainer*> g_trainer{nullptr};

// Ctrl-C (or SIGTERM, which schedulers send before killing a job, or SIGHUP, a closed terminal) finishes the
// current step (cutting a validation short) and writes a resume checkpoint instead of losing the run; the exit
// status is then 130. A second Ctrl-C or SIGTERM, 2 s or more after the first (impatience while a big checkpoint
// is written), ends the process at once: a checkpoint is written to a temporary and renamed, so the previous
// resume.ckpt stays whole. Closer repeats are the same stop (a terminal's hangup reaches the process twice;
// `pkill -f bin/train` under mpirun signals the ranks and mpirun, which passes it on), and so is any SIGHUP.
static std::atomic<int64_t> g_first_stop_ns{0};  // when the current run's stop came (0: none yet)
static_assert(std::atomic<int64_t>::is_always_lock_free, "read and written in a signal handler");

static int64_t monotonic_ns() {  // clock_gettime is async-signal-safe
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static std::atomic<bool> g_speaks{true};  // whether this process acknowledges a stop (rank 0 speaks for all)

// bin/train with options, between parsing them and the Trainer being whole (reading weights, estimating a Fisher).
static std::atomic<bool> g_setting_up{false};

static void watch(tune::Trainer* t) {  // a new run: its first signal is a stop again
    g_first_stop_ns = 0;
    g_speaks = tune::launch_info().rank == 0;
    g_trainer = t;
}

static void on_interrupt(int sig) {
    if (tune::Trainer* t = g_trainer.load()) {
        const int64_t now = monotonic_ns(), first = g_first_stop_ns.load();
        if (first == 0 || sig == SIGHUP || now - first < 2000000000) {
            int64_t none = 0;
            if (first == 0 && g_first_stop_ns.compare_exchange_strong(none, now)) {  // once, if two come together
                // Said at once: the step may be long (--grad-accum), and silence reads as a signal lost.
                static const char ack[] = "\ntrain: stop signal: the run stops after this step, saving its resume "
                                          "checkpoint if it writes one; a second Ctrl-C or SIGTERM, 2 s or more "
                                          "later, ends it at once\n";
                if (g_speaks && write(STDERR_FILENO, ack, sizeof ack - 1) < 0) {}
            }
            t->request_stop();
            return;
        }
        static const char msg[] = "\ntrain: stopped at once (a second stop signal); the run goes on from the last "
                                  "resume.ckpt written, if any\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {}  // nothing to do if stderr is gone
    } else if (g_setting_up.load()) {
        static const char msg[] = "\ntrain: stopped before the run began training (nothing of it to save)\n";
        if (g_speaks && write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {}
    }
    std::signal(sig, SIG_DFL);  // no run to stop: the signal's usual end
    std::raise(sig);
}

static void handle_interrupts() { tune::catch_stop_signals(on_interrupt); }  // SIGHUP: the session went away

int main(int argc, char** argv) {
    // DIST: an exit status every rank came to together (the run's own end, --max-bad-steps, an lr-find without a
    // suggestion), as opposed to one rank's error, which must stop the others.
    bool agreed = false;
    const int rc = tune::run_tool("train", [&]() -> int {
        if (argc == 1) {
            if (tune::launch_info().world > 1)
                throw tune::UsageError("the default job runs in one process; give options to train data-parallel");
            tune::DefaultJobOptions job;  // the embedded demo
            job.on_trainer = [](tune::Trainer* t) { watch(t); };
            handle_interrupts();
            return tune::run_default_job(job);
        }
        tune::TrainArgs args;
        if (!tune::parse_train_args(argc, argv, args)) {
            // The help is this call's product, unlike a run's progress log: a write that failed is an error.
            std::fputs(tune::train_help().c_str(), stdout);
            if (std::fflush(stdout) != 0 || std::ferror(stdout))
                throw tune::Error(std::string("cannot write the help to standard output: ") + std::strerror(errno));
            return 0;
        }
        if (tune::launch_info().rank == 0)
            for (const std::string& note : args.parse_notes) std::fprintf(stderr, "note: %s\n", note.c_str());
        // A stop while the run sets up (minutes, for gpt2-xl's weights or a Fisher estimate) ends it, saying so.
        g_speaks = tune::launch_info().rank == 0;
        g_setting_up = true;
        handle_interrupts();
        tune::Trainer trainer(args);
        watch(&trainer);
        g_setting_up = false;
        struct Forget {  // before the trainer's destructor runs, on every way out of this scope
            ~Forget() { g_trainer = nullptr; }
        } forget;
        if (args.memory_map) {
            if (tune::launch_info().rank == 0) trainer.print_memory_detail();  // rank 0 speaks for all
            return 0;
        }
        if (args.lr_find) {
            const double lr = trainer.lr_find(args.steps, args.lr_find_lo, args.lr_find_hi);
            if (trainer.stop_requested()) return tune::Trainer::kInterrupted;  // a partial sweep suggests nothing
            agreed = true;  // every rank sees the same losses, so the same suggestion or none
            const bool speaks = tune::launch_info().rank == 0;
            const std::string plot = args.out_dir.empty() ? "" : "; plot: " + args.out_dir + "/lr_find.svg";
            if (std::isnan(lr)) {
                if (speaks)
                    std::printf("no suggested learning rate: the sweep ended with too few points (fewer than 3) to "
                                "find a slope; give more --steps, or a --lr-find-lo further from where the loss "
                                "diverges%s\n", plot.c_str());
                return 1;
            }
            if (speaks)
                std::printf("suggested learning rate: %.3g (steepest descent of the smoothed loss)%s\n", lr,
                            plot.c_str());
            return 0;
        }
        const int status = trainer.run();
        agreed = true;  // its every exit is decided from values all ranks share
        return status;
    }, false);  // standard output is a progress log; the run's product is its files
    // Data parallel: shut MPI/NCCL down, or on one rank's failure stop the other ranks instead of leaving them
    // waiting (an interrupted run stopped every rank together, in order; an agreed status needs no stopping).
    tune::run_tool("train", [&] {
        tune::finish_distributed(rc == tune::Trainer::kInterrupted || agreed ? 0 : rc);
        return 0;
    }, false);
    return rc;
}
