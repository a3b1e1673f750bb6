// Learning-rate schedules, as functions of the step (0-based) so any step's rate can be recomputed on
// resume and checked against its formula in tests.
//   constant:  lr
//   cosine:    linear warmup from lr/warmup to lr over `warmup` steps, then cosine decay to lr*min_frac
//              at the last step: lr_min + 0.5 (lr - lr_min)(1 + cos(pi * progress))
#pragma once

#include <string>

namespace tune {

struct ScheduleConfig {
    std::string kind = "cosine";  // constant | cosine
    float lr = 3e-4f;
    int warmup = 0;           // steps of linear warmup (all schedules)
    float min_frac = 0.1f;    // floor of cosine decay, as a fraction of lr
    int total_steps = 1;
};

float lr_at(const ScheduleConfig& s, int step);

// Throws tune::UsageError for an unknown kind or out-of-range numbers.
void validate_schedule(const ScheduleConfig& s);

}  // namespace tune
