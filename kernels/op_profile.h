// Where a training step's time goes, op by op: what `bin/train --profile-step STEP` prints, measured inside a
// real step rather than added up from kernel benchmarks that each ran alone.
//
// Between Backend::profile_begin() and profile_end() a backend times every op it runs: the CUDA backend each
// launcher's work on the GPU (a CUDA event before and after it on its stream, so the time the GPU spent, not the
// time the host took to launch it), the CPU backend each op's wall time. Each op is filed under the model's
// ranges at the time (Backend::range_push), with layer numbers folded, so the 12 blocks' forward matmuls add up to
// one row, "layers / forward · matmul_forward", and the LM head's, outside every block, get a row of their own.
// What no op covers (launch gaps, host work, copies and memsets, communication) is the step's time less theirs.
#pragma once

#include <string>
#include <vector>

namespace tune {

struct OpTime {
    std::string where;  // the model's ranges, outermost first, layer numbers folded: "layers / backward"; "" outside
    std::string op;     // the op or launcher: "layernorm_backward"
    int calls = 0;
    double ms = 0;      // summed over the calls
};

// "layer 7 / forward" -> "layers / forward"; a range that does not start with "layer N" is returned as it is.
std::string fold_layer(const std::string& range);

// The ranges open now and the ops timed so far, summed per (where, op).
class OpProfile {
   public:
    void push(const std::string& range);  // folded here
    void pop();                           // one with nothing open does nothing
    std::string where() const;            // the open ranges joined by " / " ("" when none)
    void add(const std::string& where, const std::string& op, double ms);
    std::vector<OpTime> table() const;    // largest time first; equal times in the order first seen
    void clear_times() { rows_.clear(); }

   private:
    std::vector<std::string> ranges_;
    std::vector<OpTime> rows_;
};

// The table bin/train prints: the first `max_rows` rows, each with its share of `step_ms`, then the rest folded into
// one line, and the time no op covers. `clock` says what was timed ("GPU time of each launcher (CUDA events)").
std::string format_profile(const std::vector<OpTime>& rows, int step, double step_ms, const std::string& clock,
                           size_t max_rows);
// The same as JSON: {"step":S,"step_ms":..,"clock":"..","ops":[{"where":..,"op":..,"calls":..,"ms":..},...]}.
std::string profile_json(const std::vector<OpTime>& rows, int step, double step_ms, const std::string& clock);

}  // namespace tune
