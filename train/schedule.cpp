#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "kernels/common.h"

namespace tune {

float lr_at(const ScheduleConfig& s, int step) {
    if (step < s.warmup) return s.lr * (float)(step + 1) / (float)s.warmup;
    const double lr = s.lr, lr_min = lr * s.min_frac;
    const int t = step - s.warmup;                  // steps after warmup
    const int n = std::max(1, s.total_steps - s.warmup);  // steps the schedule proper spans
    // Progress 0 at the first step after warmup, 1 at the last; a single such step is a first step (the peak),
    // so `--steps 1` trains at --lr.
    const double p = n <= 1 ? 0.0 : std::min(1.0, (double)t / (double)(n - 1));
    if (s.kind == "constant") return s.lr;
    if (s.kind == "cosine") return (float)(lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(M_PI * p)));
    if (s.kind == "linear") return (float)(lr + (lr_min - lr) * p);
    if (s.kind == "stlr") {
        // Howard and Ruder decay over cut * (1/cut_frac - 1) steps: the n - cut steps after the cut when n *
        // cut_frac is whole. Over n - cut the decay spans the run for any n; over their span a short run (n <
        // 1/cut_frac: cut is 1) ended high, and one with a fraction of a step cut off ended early at the floor.
        const double cut = std::max(1.0, std::floor(n * (double)s.cut_frac));
        const double q = t < cut ? t / cut : 1.0 - (t - cut) / std::max(1.0, n - cut);
        return (float)(lr * (1.0 + std::max(0.0, q) * (s.ratio - 1.0)) / s.ratio);
    }
    // cyclical
    const double h = s.half_cycle;
    const double cycle = std::floor(1.0 + t / (2.0 * h));
    const double x = std::fabs(t / h - 2.0 * cycle + 1.0);
    double scale = 1.0;
    if (s.kind == "triangular2") scale = 1.0 / std::pow(2.0, cycle - 1.0);
    if (s.kind == "exp_range") scale = std::pow((double)s.gamma, (double)t);
    return (float)(lr_min + (lr - lr_min) * std::max(0.0, 1.0 - x) * scale);
}

void validate_schedule(const ScheduleConfig& s) {
    static const char* kinds[] = {"constant", "cosine", "linear", "triangular", "triangular2", "exp_range", "stlr"};
    if (std::none_of(std::begin(kinds), std::end(kinds), [&](const char* k) { return s.kind == k; }))
        throw UsageError("--schedule: unknown schedule '" + s.kind +
                         "' (expected constant, cosine, linear, triangular, triangular2, exp_range or stlr)");
    if (!(s.lr > 0)) throw UsageError("--lr: must be > 0, got " + std::to_string(s.lr));
    if (s.warmup < 0) throw UsageError("--warmup: must be >= 0, got " + std::to_string(s.warmup));
    if (!(s.min_frac >= 0 && s.min_frac <= 1))
        throw UsageError("--min-lr-frac: must be in [0, 1], got " + std::to_string(s.min_frac));
    if (s.half_cycle < 1) throw UsageError("--half-cycle: must be >= 1, got " + std::to_string(s.half_cycle));
    if (!(s.gamma > 0 && s.gamma <= 1)) throw UsageError("--gamma: must be in (0, 1], got " + std::to_string(s.gamma));
    if (!(s.cut_frac > 0 && s.cut_frac < 1))
        throw UsageError("--cut-frac: must be in (0, 1), got " + std::to_string(s.cut_frac));
    if (!(s.ratio >= 1)) throw UsageError("--ratio: must be >= 1, got " + std::to_string(s.ratio));
}

}  // namespace tune
