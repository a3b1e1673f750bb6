// Learning-rate schedules, as functions of the step (0-based) so any step's rate can be recomputed on
// resume and checked against its formula in tests. `lr` is the peak rate; every schedule starts with
// `warmup` steps of linear warmup (lr * (step+1) / warmup) when warmup > 0.
//   constant:     lr
//   cosine:       lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,  p = progress through the decay steps, 0..1
//   linear:       lr + (lr_min - lr) p
//                 (lr_min = lr * min_frac for both)
//   triangular, triangular2, exp_range (cyclical learning rates, Smith 2017), with half-cycle h steps,
//                 base = lr * min_frac:   cycle = floor(1 + t / 2h),  x = |t/h - 2 cycle + 1|
//                 lr_t = base + (lr - base) max(0, 1 - x) s,   s = 1 | 1/2^(cycle-1) | gamma^t
//   stlr:         slanted triangular (Howard & Ruder 2018, ULMFiT): cut = floor(total * cut_frac),
//                 p = t/cut before the cut, 1 - (t - cut)/(cut (1/cut_frac - 1)) after it,
//                 lr_t = lr (1 + p (ratio - 1)) / ratio
// (t counts steps after the warmup.)
#pragma once

#include <string>

namespace tune {

struct ScheduleConfig {
    std::string kind = "cosine";  // constant | cosine | linear | triangular | triangular2 | exp_range | stlr
    float lr = 3e-4f;
    int warmup = 0;           // steps of linear warmup (all schedules)
    float min_frac = 0.1f;    // floor of cosine/linear decay and base of the cyclical ones, as a fraction of lr
    int total_steps = 1;
    int half_cycle = 100;     // cyclical: steps from base to peak
    float gamma = 0.999f;     // exp_range: amplitude factor per step
    float cut_frac = 0.1f;    // stlr: fraction of steps spent rising
    float ratio = 32.0f;      // stlr: peak / lowest rate
};

float lr_at(const ScheduleConfig& s, int step);

// Throws tune::UsageError for an unknown kind or out-of-range numbers.
void validate_schedule(const ScheduleConfig& s);

}  // namespace tune
