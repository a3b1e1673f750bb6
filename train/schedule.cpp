#include "train/schedule.h"

#include <cmath>

#include "kernels/common.h"

namespace tune {

float lr_at(const ScheduleConfig& s, int step) {
    if (step < s.warmup) return s.lr * (float)(step + 1) / (float)s.warmup;
    if (s.kind == "constant") return s.lr;
    // cosine
    const double lr_min = (double)s.lr * s.min_frac;
    const int decay_steps = s.total_steps - s.warmup;
    const double progress = decay_steps <= 1 ? 1.0 : (double)(step - s.warmup) / (double)(decay_steps - 1);
    return (float)(lr_min + 0.5 * ((double)s.lr - lr_min) * (1.0 + std::cos(M_PI * std::fmin(progress, 1.0))));
}

void validate_schedule(const ScheduleConfig& s) {
    if (s.kind != "constant" && s.kind != "cosine")
        throw UsageError("--schedule: unknown schedule '" + s.kind + "' (expected constant or cosine)");
    if (!(s.lr > 0)) throw UsageError("--lr: must be > 0, got " + std::to_string(s.lr));
    if (s.warmup < 0) throw UsageError("--warmup: must be >= 0, got " + std::to_string(s.warmup));
    if (!(s.min_frac >= 0 && s.min_frac <= 1))
        throw UsageError("--min-lr-frac: must be in [0, 1], got " + std::to_string(s.min_frac));
}

}  // namespace tune
